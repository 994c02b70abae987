"""The names QInfra gives what it creates: the owner mark of a run, the directory of a project in an environment,
and the JetStream stream and KV bucket names of a resource (readable, and distinct for distinct projects, environments
and names), with the prefixes and suffixes they carry.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

OWNER_FILE = ".quantum-owner"
STREAM_PREFIX = "QINFRA_"
KV_STREAM_PREFIX = "KV_"
SQLITE_SUFFIX = ".sqlite3"


def stream_name(project: str, name: str, environment: str = "dev") -> str:
    """The JetStream stream of ``project``'s resource ``name``: readable, and distinct for distinct triples.

    ``a`` + ``b_c`` and ``a_b`` + ``c`` read alike (``A_B_C``), so the name ends with a digest of the pair (of
    the triple outside ``dev``, whose names are those of before environments counted).
    """
    return _bus_name(project, name, environment)


def kv_bucket_name(project: str, name: str, environment: str = "dev") -> str:
    """The JetStream KV bucket of ``project``'s resource ``name`` (its stream is ``KV_<bucket>``)."""
    return _bus_name(project, name, environment)


def _bus_name(project: str, name: str, environment: str) -> str:
    whole = f"{project}/{name}" if environment == "dev" else f"{project}/{environment}/{name}"
    parts = f"{project}_{name}" if environment == "dev" else f"{project}_{environment}_{name}"
    readable = re.sub(r"[^A-Z0-9_]", "_", parts.upper())[:80]
    digest = hashlib.sha256(whole.encode()).hexdigest()[:10]
    return f"{STREAM_PREFIX}{readable}_{digest}"


def owner_mark(run_id: str) -> str:
    return f"quantum run {run_id}"


def project_dir(root: Path, project: str, environment: str = "dev") -> Path:
    """Where a project's directories and databases live: ``<root>/<project>`` in dev (as before environments
    counted), ``<root>/<project>@<environment>`` elsewhere (``@`` is in no name, so no two meet)."""
    return root / (project if environment == "dev" else f"{project}@{environment}")
