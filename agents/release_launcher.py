"""The launcher of a released service, run *inside* the sandbox: the generated code serves on the socket it is given.

The worker never imports this module: the release host copies it beside the released code and runs it in the
sandbox as ``python launcher.py --fd N --module M``. File descriptor ``N`` is a listening Unix socket the release
host created outside the sandbox (in a directory the sandbox does not see) and handed over on ``exec``. The sandbox
has a network namespace of its own (nothing but its own loopback), so this socket is the only way in or out.

The service follows the ``make_server(port, host)`` convention of the acceptance runner: it returns a
``socketserver`` server (``http.server.ThreadingHTTPServer``). It is made on the sandbox's own loopback, then its
listening socket is replaced by the one given, and it serves for ever.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import socket
import sys
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--module", required=True)
    args = parser.parse_args()
    given = socket.socket(fileno=args.fd)
    module = importlib.import_module(args.module)
    make = getattr(module, "make_server", None)
    if not callable(make):
        print(f"{args.module} has no make_server(port, host)", file=sys.stderr)
        return 3
    server: Any = make(port=0, host="127.0.0.1")
    if not hasattr(server, "serve_forever") or not hasattr(server, "socket"):
        print("make_server did not return a socketserver server", file=sys.stderr)
        return 3
    server.socket.close()
    server.socket = given
    server.server_address = ("127.0.0.1", 0)

    def get_request() -> tuple[socket.socket, tuple[str, int]]:
        conn, _ = given.accept()
        return conn, ("127.0.0.1", 0)  # a Unix peer has no address; handlers expect a host and a port

    server.get_request = get_request
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving {args.module}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
