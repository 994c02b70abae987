import pytest

from {{module}} import ConfigError, Setting, coerce, from_env, from_ini, from_json, load

SETTINGS = [
    Setting("host", str, "localhost"),
    Setting("port", int, 8080),
    Setting("debug", bool, False),
    Setting("ratio", float, 0.5),
    Setting("database_url", str),
]


def test_defaults_and_required():
    assert load(SETTINGS, {"database_url": "sqlite://"}) == {
        "host": "localhost", "port": 8080, "debug": False, "ratio": 0.5, "database_url": "sqlite://",
    }
    with pytest.raises(ConfigError, match="database_url: required but not set"):
        load(SETTINGS, {})
    assert Setting("x").required and not Setting("y", int, 1).required


def test_sources_merge_in_order_and_env_overrides():
    base = from_json('{"port": 9000, "DATABASE_URL": "pg://a", "host": "h1"}')
    ini = from_ini("[settings]\nhost = h2\ndebug = yes\n")
    env = {"APP_PORT": "9100", "APP_RATIO": "0.25", "PATH": "/bin", "OTHER_PORT": "1"}
    config = load(SETTINGS, base, ini, environ=env, prefix="APP_")
    assert config == {"host": "h2", "port": 9100, "debug": True, "ratio": 0.25, "database_url": "pg://a"}


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        load(SETTINGS, {"port": "eighty", "debug": "maybe", "colour": "red"})
    message = str(info.value)
    assert "colour: unknown setting" in message
    assert "port: expected int, got 'eighty'" in message
    assert "debug: expected bool, got 'maybe'" in message
    assert "database_url: required but not set" in message


def test_coerce():
    assert coerce("n", "42", int) == 42 and coerce("n", 4.0, int) == 4
    assert coerce("f", "1.5", float) == 1.5
    assert coerce("b", "ON", bool) is True and coerce("b", "0", bool) is False and coerce("b", True, bool) is True
    assert coerce("s", 12, str) == "12"
    for value, kind in [(True, int), (None, float), ([1], str), ("", bool), ("x", float)]:
        with pytest.raises(ConfigError):
            coerce("k", value, kind)


def test_json_errors():
    with pytest.raises(ConfigError, match="invalid JSON"):
        from_json("{not json")
    with pytest.raises(ConfigError, match="must be an object"):
        from_json("[1, 2]")


def test_ini_errors_and_no_interpolation():
    assert from_ini("[app]\npath = %(home)s/x\n", section="app") == {"path": "%(home)s/x"}
    with pytest.raises(ConfigError, match=r"no \[settings\] section \(found: app\)"):
        from_ini("[app]\na = 1\n")
    with pytest.raises(ConfigError, match="invalid INI"):
        from_ini("no section header\n")


def test_env_prefix():
    assert from_env({"APP_HOST": "x", "app_port": "1", "HOME": "/root"}, "APP_") == {"host": "x", "port": "1"}
    with pytest.raises(ConfigError, match="prefix is required"):
        from_env({"A": "1"}, "")
