import pytest

from {{module}} import slugify, unique_slug


def test_basic():
    assert slugify("Hello, World!") == "hello-world"


def test_accents_are_folded():
    assert slugify("Crème Brûlée à la carte") == "creme-brulee-a-la-carte"


def test_separator():
    assert slugify("a b  c", separator="_") == "a_b_c"


def test_length_limit_cuts_at_a_word():
    assert slugify("one two three", max_length=8) == "one-two"


def test_one_long_word_is_truncated():
    assert slugify("supercalifragilistic", max_length=5) == "super"


def test_empty_and_symbols():
    assert slugify("") == ""
    assert slugify("!!!") == ""


def test_invalid_length():
    with pytest.raises(ValueError):
        slugify("x", max_length=0)


def test_unique():
    assert unique_slug("Hello", set()) == "hello"
    assert unique_slug("Hello", {"hello", "hello-2"}) == "hello-3"
    assert unique_slug("!!!", set()) == "item"
