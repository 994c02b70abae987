import io

import pytest

from {{module}} import CommandError, build_parser, main


def run(argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_greet():
    assert run(["greet", "Ada"]) == (0, "Hello, Ada!\n", "")


def test_greet_shout_flag():
    assert run(["greet", "Ada", "--shout"]) == (0, "HELLO, ADA!\n", "")


def test_sum_with_precision():
    assert run(["sum", "1", "2.5", "-0.25"]) == (0, "3.25\n", "")
    assert run(["sum", "1", "2", "--precision", "0"]) == (0, "3\n", "")


def test_command_error_returns_1_with_a_message():
    code, out, err = run(["sum", "1", "--precision", "-1"])
    assert code == 1 and out == ""
    assert "--precision must be 0 or more" in err


def test_count_reads_stdin():
    assert run(["count"], stdin="one two\nthree\n") == (0, "lines=2 words=3 chars=14\n", "")
    assert run(["count"], stdin="") == (0, "lines=0 words=0 chars=0\n", "")


def test_usage_errors_return_2(capsys):
    assert run([])[0] == 2
    assert run(["frobnicate"])[0] == 2
    assert run(["sum"])[0] == 2
    assert run(["sum", "abc"])[0] == 2
    assert "invalid float value" in capsys.readouterr().err


def test_help_and_version_return_0(capsys):
    assert run(["--help"])[0] == 0
    assert "greet" in capsys.readouterr().out
    assert run(["--version"])[0] == 0
    assert "0.1.0" in capsys.readouterr().out


def test_parser_maps_commands_to_handlers():
    args = build_parser().parse_args(["greet", "Bob"])
    assert args.command == "greet" and args.name == "Bob" and args.shout is False


def test_defaults_to_process_streams(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("a b c"))
    assert main(["count"]) == 0
    assert capsys.readouterr().out == "lines=1 words=3 chars=5\n"
    assert issubclass(CommandError, Exception)
