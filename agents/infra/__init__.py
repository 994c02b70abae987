"""QInfra: declarative infrastructure with a state store, dependency order and compensation.

Resources (``kind``): a ``directory`` and a ``sqlite`` database file under ``<root>/<project>[@<environment>]/``,
a JetStream ``stream`` and a JetStream ``kv`` bucket on the bus, and a loopback ``port`` reserved for the project.
Each may name resources of the same request it needs (``depends_on``), or be a reference to a resource another
project declares (``from_project``).

**State.** Each project and environment has a state file, ``<root>/.state/<project>/<environment>/state.json``
(``.state`` cannot be a project: names start with a letter), written atomically (a temporary file renamed over
it). It records every resource with its spec, its address, the run that created it and the run that last changed
it, the set last declared, and a serial that every write increments. An exclusive ``flock`` on the ``lock`` file
beside it is held by every activity that reads or writes the state, so two runs never interleave; the kernel
releases it when its process dies, so a dead worker's lock never blocks. A plan records the serial it was made at;
provisioning refuses a plan made at an older serial (another run applied in between): plan again.

**Plan.** The diff of the desired set against the state: ``create``, ``update`` (in place: a stream's subjects,
sizes, ages; a bucket's history), ``replace`` (the kind or a stream's or bucket's storage changes), ``delete``
(recorded, no longer declared) and ``noop``. A resource that exists but is not in the state (someone else's) is
refused, as are a dependency cycle, a dependency on an undeclared name and a name declared twice: each a
non-retryable ``InvalidRequest`` naming the resources. Impact HIGH for prod, any delete or replace, any change to
a database, a stream or bucket over 1 GiB; MEDIUM when a stream or bucket is created or changed; else LOW.

**Provision** applies the plan in dependency order (``graphlib.TopologicalSorter``; deletes last, dependents
first), and records each change in the state as it happens and, before it happens, what the resource was in the
run's journal (``runs/<run>.json``): a retried provisioning skips what is done, and one already applied returns its
result. **Destroy** (the compensation) walks the journal backwards: what the run created is removed, what it
updated or replaced is put back to its previous spec, and what it deleted is put back: a directory or a database
file from the run's trash (deletes move them there), a stream or a bucket recreated empty with its previous spec
(their messages are gone), a port re-reserved. A resource changed since by another run is left as it is (the
result says so). Trash older than ``TRASH_RETENTION_SECONDS`` is purged by a later provisioning.

Runs from before the state store (no journal) are compensated as before, by their owner marks (a
``.quantum-owner`` file, a stream's description).

**Subjects.** A project's streams stay in its own subject space, ``qinfra.<project>`` in dev and
``qinfra.<project>.<environment>`` elsewhere (:func:`subject_scope`): a stream without ``subjects`` takes
``<scope>.<name>.>``, and explicit subjects must be the scope itself or lie under it, with no wildcard in its tokens
(``qinfra.>`` would take every project's messages, and NATS would then refuse every other project's stream). The
plan also refuses subjects that overlap those of a stream already on the server, naming that stream and its owner,
and subjects that overlap each other within the request, rather than leaving NATS to refuse them while provisioning.

**Layout.** ``agent.py`` holds ``InfraAgent`` and its activities (``infra.plan``, ``infra.declared``,
``infra.provision``, ``infra.destroy``); ``effects.py`` its base, the bus, the locked state and the effects on each
kind of resource; ``state.py`` the stored state, the journal and the dependency order; ``subjects.py`` the subject
scope and overlap rules; ``names.py`` the names of what is created; ``files.py`` the file-system helpers. This module
re-exports the names other modules import from ``agents.infra``.
"""

from __future__ import annotations

from agents.infra.agent import HIGH_STREAM_BYTES, InfraAgent
from agents.infra.effects import DEFAULT_LOCK_TIMEOUT, RESOURCES
from agents.infra.effects import _Context as _Context  # tests type their overrides of the effects with it
from agents.infra.names import (
    KV_STREAM_PREFIX,
    OWNER_FILE,
    SQLITE_SUFFIX,
    STREAM_PREFIX,
    kv_bucket_name,
    owner_mark,
    project_dir,
    stream_name,
)
from agents.infra.state import (
    LOCK_FILE,
    PORTS_LOCK_FILE,
    RUNS_DIR,
    STATE_DIR,
    STATE_FILE,
    TRASH_DIR,
    TRASH_RETENTION_SECONDS,
    Journal,
    Record,
    State,
    attributes,
    dependency_order,
)
from agents.infra.subjects import (
    MAX_SUBJECT_CHARS,
    SUBJECT_ROOT,
    subject_outside_scope,
    subject_scope,
    subjects_overlap,
)

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "HIGH_STREAM_BYTES",
    "KV_STREAM_PREFIX",
    "LOCK_FILE",
    "MAX_SUBJECT_CHARS",
    "OWNER_FILE",
    "PORTS_LOCK_FILE",
    "RESOURCES",
    "RUNS_DIR",
    "SQLITE_SUFFIX",
    "STATE_DIR",
    "STATE_FILE",
    "STREAM_PREFIX",
    "SUBJECT_ROOT",
    "TRASH_DIR",
    "TRASH_RETENTION_SECONDS",
    "InfraAgent",
    "Journal",
    "Record",
    "State",
    "attributes",
    "dependency_order",
    "kv_bucket_name",
    "owner_mark",
    "project_dir",
    "stream_name",
    "subject_outside_scope",
    "subject_scope",
    "subjects_overlap",
]
