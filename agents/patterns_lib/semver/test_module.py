import pytest

from {{module}} import Version


def test_parse_and_str_round_trip():
    for text in ["1.2.3", "0.0.1-alpha.1", "2.0.0-rc.1+build.5"]:
        assert str(Version.parse(text)) == text


def test_invalid():
    for text in ["1.2", "01.2.3", "1.2.3-", "v1.2.3", "a.b.c"]:
        with pytest.raises(ValueError):
            Version.parse(text)


def test_ordering():
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0", "1.0.1", "1.1.0", "2.0.0"]
    versions = [Version.parse(v) for v in ordered]
    assert sorted(reversed(versions)) == versions
    assert Version.parse("1.0.0+a") == Version.parse("1.0.0+b")
    assert len({Version.parse("1.0.0+a"), Version.parse("1.0.0")}) == 1
    assert Version.parse("1.0.0") != "1.0.0"
    with pytest.raises(TypeError):
        Version.parse("1.0.0") < "1.0.0"


def test_bump():
    v = Version.parse("1.2.3-rc.1")
    assert str(v.bump("major")) == "2.0.0"
    assert str(v.bump("minor")) == "1.3.0"
    assert str(v.bump("patch")) == "1.2.4"
    with pytest.raises(ValueError):
        v.bump("micro")
