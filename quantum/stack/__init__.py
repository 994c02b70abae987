"""The embedded stack: a Temporal dev server and a JetStream nats-server on this machine, when none answers.

For each of Temporal and NATS, :class:`EmbeddedStack` uses what answers at the configured address, starts the
embedded server on exactly that address when it is on this machine and its port is free, and otherwise says
clearly what is in the way. It stops only what it started (or adopted), in reverse order, whatever happened in
between.

The servers belong to the process that started them:

* they start with a clean environment (``PATH``, locale, time zone): none of this process's secrets reach them;
* they run in sessions of their own (a terminal's Ctrl-C reaches this process, which then stops them in order), log
  to files under ``<data_dir>/logs`` and receive SIGTERM when this process dies, even by ``kill -9``;
* each is recorded in ``<data_dir>/run/<name>.json`` (pid and start time, command line, address, owner) while it
  runs, so that a server that outlived its owner anyway is adopted (or stopped) by the next stack on that data
  directory, and a pid the kernel has since reused is never signalled.

Modules: :mod:`~quantum.stack.probes` (addresses, ports, "does it answer"), :mod:`~quantum.stack.process` (one
server process), :mod:`~quantum.stack.records` (run records, adoption), :mod:`~quantum.stack.servers` (the two
servers), :mod:`~quantum.stack.embedded` (the stack).
"""

from quantum.stack.embedded import EmbeddedStack, loopback_settings, process_env
from quantum.stack.errors import StackError
from quantum.stack.probes import free_port, nats_answers, port_in_use, temporal_answers
from quantum.stack.process import PYPI_PACKAGES, find_binary
from quantum.stack.records import RunRecord
from quantum.stack.servers import NatsServer, TemporalDevServer

__all__ = [
    "loopback_settings",
    "process_env",
    "PYPI_PACKAGES",
    "EmbeddedStack",
    "NatsServer",
    "RunRecord",
    "StackError",
    "TemporalDevServer",
    "find_binary",
    "free_port",
    "nats_answers",
    "port_in_use",
    "temporal_answers",
]
