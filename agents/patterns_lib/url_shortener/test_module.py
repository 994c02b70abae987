import pytest

from {{module}} import ALPHABET, Shortener, decode_base62, encode_base62, normalize_url


def test_base62_round_trip():
    assert encode_base62(0) == "0" and encode_base62(61) == "Z" and encode_base62(62) == "10"
    for n in [1, 61, 62, 3843, 3844, 10**20]:
        assert decode_base62(encode_base62(n)) == n
    assert len(ALPHABET) == len(set(ALPHABET)) == 62
    with pytest.raises(ValueError):
        encode_base62(-1)
    for bad in ["", "ab!"]:
        with pytest.raises(ValueError):
            decode_base62(bad)


def test_normalize_url():
    assert normalize_url("HTTPS://Example.COM") == "https://example.com/"
    assert normalize_url("http://example.com:8080/a/B?q=1#frag") == "http://example.com:8080/a/B?q=1#frag"
    for bad in ["", "ftp://example.com/", "javascript:alert(1)", "http:///path", "http://ex ample.com",
                "https://user:pw@example.com/", "http://example.com:99999/", "example.com/page"]:
        with pytest.raises(ValueError):
            normalize_url(bad)


def test_shorten_and_expand():
    short = Shortener()
    code = short.shorten("https://Example.com/articles/42")
    assert len(code) == 7 and all(c in ALPHABET for c in code)
    assert short.expand(code) == "https://example.com/articles/42"
    assert short.shorten("https://example.com/articles/42") == code
    other = short.shorten("https://example.com/articles/43")
    assert other != code and len(short) == 2
    with pytest.raises(KeyError, match="unknown short code"):
        short.expand("nope")


def test_codes_are_stable_across_instances():
    assert Shortener().shorten("https://a.example/") == Shortener().shorten("https://a.example/")


def test_collisions_get_a_new_code():
    short = Shortener(digest=lambda text: 5 if "#" not in text else 7 + len(text))
    first = short.shorten("https://a.example/")
    second = short.shorten("https://b.example/")
    assert first == "0000005"
    assert second != first
    assert short.expand(first) == "https://a.example/"
    assert short.expand(second) == "https://b.example/"


def test_gives_up_when_every_code_is_taken():
    short = Shortener(max_tries=3, digest=lambda text: 1)
    short.shorten("https://a.example/")
    with pytest.raises(RuntimeError, match="no free code after 3 tries"):
        short.shorten("https://b.example/")


def test_aliases():
    short = Shortener()
    assert short.shorten("https://example.com/docs", alias="docs") == "docs"
    assert short.expand("docs") == "https://example.com/docs"
    assert short.shorten("https://example.com/docs") == "docs"
    assert short.shorten("https://example.com/docs", alias="docs") == "docs"
    with pytest.raises(ValueError, match="already taken"):
        short.shorten("https://example.com/other", alias="docs")
    for bad in ["a", "has space", "x" * 33, "semi;colon"]:
        with pytest.raises(ValueError):
            short.shorten("https://example.com/", alias=bad)


def test_short_codes_are_refused():
    with pytest.raises(ValueError):
        Shortener(length=3)
