import pytest

from {{module}} import Table, parse_markdown, render_ascii, render_markdown

HEADERS = ["Name", "Qty", "Note"]
ROWS = [["apple", 3, "red"], ["kiwi", 12, None]]


def test_render_markdown_with_alignment():
    assert render_markdown(HEADERS, ROWS, align=["left", "right", "center"]) == "\n".join([
        "| Name  | Qty | Note |",
        "| :---- | --: | :--: |",
        "| apple |   3 | red  |",
        "| kiwi  |  12 |      |",
    ])


def test_render_markdown_defaults_and_minimum_width():
    assert render_markdown(["a"], [["x"]]) == "| a   |\n| :-- |\n| x   |"


def test_pipes_and_newlines_are_escaped():
    text = render_markdown(["a|b"], [["line1\nline2"]])
    assert text.splitlines()[0] == "| a\\|b        |"
    assert parse_markdown(text).headers == ["a|b"]
    assert parse_markdown(text).rows == [["line1 line2"]]


def test_render_ascii():
    assert render_ascii(["id", "name"], [[1, "ann"], [22, "bo"]], align=["right", "left"]) == "\n".join([
        "+----+------+",
        "| id | name |",
        "+====+======+",
        "|  1 | ann  |",
        "| 22 | bo   |",
        "+----+------+",
    ])


def test_render_errors():
    with pytest.raises(ValueError, match="row 1 has 2 cells, expected 3"):
        render_markdown(HEADERS, [["a", "b"]])
    with pytest.raises(ValueError):
        render_markdown(HEADERS, ROWS, align=["left"])
    with pytest.raises(ValueError):
        render_ascii(["a"], [], align=["middle"])


def test_round_trip():
    text = render_markdown(HEADERS, ROWS, align=["left", "right", "center"])
    assert parse_markdown(text) == Table(
        headers=["Name", "Qty", "Note"],
        rows=[["apple", "3", "red"], ["kiwi", "12", ""]],
        align=["left", "right", "center"],
    )


def test_parse_without_outer_pipes_and_plain_separator():
    table = parse_markdown("a | b\n--- | ---\n1 | 2\n\n")
    assert table.headers == ["a", "b"] and table.rows == [["1", "2"]] and table.align == ["left", "left"]


def test_parse_errors():
    with pytest.raises(ValueError, match="header line and a separator"):
        parse_markdown("| a |")
    with pytest.raises(ValueError, match="not a separator"):
        parse_markdown("| a | b |\n| --- |\n")
    with pytest.raises(ValueError, match="not a separator"):
        parse_markdown("| a |\n| :: |\n")
    with pytest.raises(ValueError, match="line 3 has 1 cells, expected 2"):
        parse_markdown("| a | b |\n| --- | --- |\n| 1 |\n")
