"""The acceptance runner: one pytest test per example of the request, run in the sandbox against the code.

The worker never imports this module: it copies it into each acceptance scratch directory as
``acceptance/test_acceptance_examples.py`` beside ``acceptance/examples.json`` (the module under test, the examples
as the request wrote them, the seconds each may take). A failing example fails with one line saying what came back
(``returned 'x'``, ``raised KeyError: 'a'``, ``answered 404 {'error': 'not found'}``); the worker adds which example
it was and what was expected from its own copy of the request, so nothing said here is trusted to name either.

Values are compared as JSON carries them: a tuple is a list, ``true`` is not ``1``, and a value JSON cannot carry
never equals an expected one. HTTP examples run in order against one server (a ``PUT`` can be read back by a later
``GET``), started with ``make_server(port=0, host="127.0.0.1")`` in a thread of this process.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import reprlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, NoReturn

import pytest

SPEC: dict[str, Any] = json.loads((Path(__file__).parent / "examples.json").read_text(encoding="utf-8"))
MODULE: str = SPEC["module"]
EXAMPLES: list[dict[str, Any]] = SPEC["examples"]
SECONDS: int = int(SPEC.get("seconds", 30))
MAX_BODY_BYTES = 1024 * 1024
MAX_SHOWN_CHARS = 300

_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 200
_shown.maxlist = _shown.maxdict = _shown.maxtuple = _shown.maxset = 20
_shown.maxlevel = 4


class TooLong(BaseException):
    """Raised by the alarm: a BaseException, so that the code's own ``except Exception`` does not swallow it."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`TooLong` in the main thread after ``seconds``. Not nested: entering one ends the one before."""

    def alarm(signum: int, frame: FrameType | None) -> None:
        raise TooLong

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fail(text: str) -> NoReturn:
    pytest.fail(text[:MAX_SHOWN_CHARS], pytrace=False)


def show(value: Any) -> str:
    """A bounded ``repr`` of ``value``, whatever its ``__repr__`` does."""
    try:
        with time_limit(5):
            return _shown.repr(value)
    except (Exception, TooLong):
        return f"<{type(value).__name__} object>"


def raised(err: BaseException) -> str:
    try:
        with time_limit(5):
            text = str(err)
    except (Exception, TooLong):
        text = ""
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def module() -> ModuleType:
    try:
        with time_limit(SECONDS):
            return importlib.import_module(MODULE)
    except TooLong:
        fail(f"could not run: importing {MODULE} did not finish within {SECONDS} s")
    except (Exception, SystemExit) as err:
        fail(f"could not run: importing {MODULE} raised {raised(err)}")


def resolve(path: str) -> Any:
    target: Any = module()
    for part in path.split("."):
        try:
            target = getattr(target, part)
        except (Exception, SystemExit):
            fail(f"could not run: {MODULE} has no {path}")
    return target


def as_json(value: Any) -> tuple[bool, Any]:
    """``value`` as JSON would carry it, and whether JSON can."""
    try:
        return True, json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return False, None


def same(value: Any, expected: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, but ``1`` is ``1.0``."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(value, (int, float)) and isinstance(expected, (int, float)):
        return value == expected
    if isinstance(value, list) and isinstance(expected, list):
        return len(value) == len(expected) and all(same(v, e) for v, e in zip(value, expected, strict=True))
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(same(value[k], expected[k]) for k in value)
    if value is None or expected is None:
        return value is None and expected is None
    return isinstance(value, str) and isinstance(expected, str) and value == expected


def is_a(err: BaseException, name: str) -> bool:
    """Whether ``err`` is an instance of the class called ``name`` (plain, qualified or with its module)."""
    return any(
        name in {cls.__name__, cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}"} for cls in type(err).__mro__
    )


def check_value(example: dict[str, Any]) -> None:
    value: Any = None
    error: BaseException | None = None
    function: Any = resolve(example["call"]) if "call" in example else None
    namespace = None if "call" in example else dict(vars(module()))
    try:
        with time_limit(SECONDS):
            if "call" in example:
                value = function(*example.get("args", []), **example.get("kwargs", {}))
            else:  # the request's expression, evaluated here in the sandbox only
                value = eval(compile(example["expr"], "<acceptance example>", "eval"), namespace)
    except TooLong:
        fail(f"did not finish within {SECONDS} s")
    except (Exception, SystemExit) as err:
        error = err
    if example.get("raises") is not None:
        if error is None:
            fail(f"returned {show(value)}")
        if not is_a(error, example["raises"]):
            fail(f"raised {raised(error)}")
        return
    if error is not None:
        fail(f"raised {raised(error)}")
    carried, plain = as_json(value)
    if not carried or not same(plain, example["expect"]):
        fail(f"returned {show(value)}")


class Server:
    """The module's HTTP server, started on first use on a free loopback port, in a thread of this process."""

    def __init__(self) -> None:
        self.server: Any = None
        self.port = 0

    def start(self) -> int:
        if self.server is not None:
            return self.port
        make = getattr(module(), "make_server", None)
        if not callable(make):
            fail(f"could not run: {MODULE} has no make_server(port, host)")
        try:
            with time_limit(SECONDS):
                server = make(port=0, host="127.0.0.1")
                port = int(server.server_address[1])
                threading.Thread(target=server.serve_forever, daemon=True).start()
        except TooLong:
            fail(f"could not run: make_server(port=0, host='127.0.0.1') did not finish within {SECONDS} s")
        except (Exception, SystemExit) as err:
            fail(f"could not run: make_server(port=0, host='127.0.0.1') raised {raised(err)}")
        self.server, self.port = server, port
        return port

    def stop(self) -> None:
        if self.server is None:
            return
        stopper = threading.Thread(target=self._stop, daemon=True)
        stopper.start()
        stopper.join(5)

    def _stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture(scope="module")
def http_server() -> Iterator[Server]:
    server = Server()
    yield server
    server.stop()


def check_http(example: dict[str, Any], server: Server) -> None:
    call = example["http"]
    port = server.start()
    headers, body = {}, None
    if "json" in call:
        body = json.dumps(call["json"]).encode()
        headers["Content-Type"] = "application/json"
    try:
        with time_limit(SECONDS):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=SECONDS)
            try:
                connection.request(call.get("method", "GET"), call["path"], body=body, headers=headers)
                response = connection.getresponse()
                status, data = response.status, response.read(MAX_BODY_BYTES + 1)
            finally:
                connection.close()
    except TooLong:
        fail(f"was not answered within {SECONDS} s")
    except (Exception, SystemExit) as err:
        fail(f"was not answered: {raised(err)}")
    try:
        answer: Any = json.loads(data)
        shown = show(answer)
        carried = True
    except (ValueError, RecursionError):
        answer, shown, carried = None, f"with a body that is not JSON: {show(data[:200])}", False
    if status != example.get("status", 200):
        fail(f"answered {status} {shown}")
    if "expect_json" in example and (not carried or not same(answer, example["expect_json"])):
        fail(f"answered {status} {shown}")


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_example(index: int, request: pytest.FixtureRequest) -> None:
    example = EXAMPLES[index]
    if "http" in example:
        check_http(example, request.getfixturevalue("http_server"))
    else:
        check_value(example)
