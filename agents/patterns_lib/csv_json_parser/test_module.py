import json

import pytest

from {{module}} import CsvError, csv_to_json, parse_bool, parse_csv, to_json

SCHEMA = {"id": int, "name": str, "price": float, "active": parse_bool}


def test_typed_records():
    text = "id,name,price,active\n1,Apple,0.5,yes\n2, Pear ,1.25,false\n"
    assert parse_csv(text, SCHEMA) == [
        {"id": 1, "name": "Apple", "price": 0.5, "active": True},
        {"id": 2, "name": "Pear", "price": 1.25, "active": False},
    ]


def test_quoted_fields_and_delimiter_and_blank_lines():
    text = 'id;name\n1;"Smith; John"\n\n2;"say ""hi"""\n'
    assert parse_csv(text, {"id": int, "name": str}, delimiter=";") == [
        {"id": 1, "name": "Smith; John"},
        {"id": 2, "name": 'say "hi"'},
    ]


def test_header_problems():
    with pytest.raises(CsvError, match="empty input"):
        parse_csv("", SCHEMA)
    with pytest.raises(CsvError, match="line 1: missing columns: price, active"):
        parse_csv("id,name\n1,a\n", SCHEMA)
    with pytest.raises(CsvError, match="unknown columns: colour"):
        parse_csv("id,colour\n1,red\n", {"id": int})
    with pytest.raises(CsvError, match="duplicate columns: id") as info:
        parse_csv("id,id\n1,2\n", {"id": int})
    assert info.value.line == 1


def test_non_strict_ignores_unknown_columns():
    assert parse_csv("id,colour\n1,red\n", {"id": int}, strict=False) == [{"id": 1}]


def test_bad_value_names_line_and_column():
    with pytest.raises(CsvError, match=r"line 3: column 'id'") as info:
        parse_csv("id,name\n1,a\nx,b\n", {"id": int, "name": str})
    assert info.value.line == 3
    with pytest.raises(CsvError, match="line 2: column 'active': not a boolean"):
        parse_csv("active\nmaybe\n", {"active": parse_bool})


def test_wrong_field_count():
    with pytest.raises(CsvError, match="line 2: expected 2 fields, got 3"):
        parse_csv("id,name\n1,a,extra\n", {"id": int, "name": str})


def test_optional_columns_default_to_none():
    schema = {"id": int, "note": str}
    assert parse_csv("id\n1\n", schema, optional=["note"]) == [{"id": 1, "note": None}]
    assert parse_csv("id,note\n1,\n2,hi\n", schema, optional=["note"]) == [{"id": 1, "note": None}, {"id": 2, "note": "hi"}]


def test_parse_bool():
    assert [parse_bool(v) for v in ["TRUE", "y", "1", "on", "No", "0", "off"]] == [True, True, True, True, False, False, False]
    with pytest.raises(ValueError):
        parse_bool("2")


def test_json_output():
    text = "id,name,price,active\n7,Fig,2.0,no\n"
    assert json.loads(csv_to_json(text, SCHEMA)) == [{"id": 7, "name": "Fig", "price": 2.0, "active": False}]
    assert to_json([{"a": 1}], indent=2) == '[\n  {\n    "a": 1\n  }\n]'
    assert json.loads(to_json([{"when": object}]))[0]["when"].startswith("<class")
