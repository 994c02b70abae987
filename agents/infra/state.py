"""The stored state of QInfra: where it lives under ``<root>/.state``, the records of a project's resources in an
environment (``State``, ``Record``), the journal of what one run changed (``Journal``), the attributes compared between
the desired and the recorded resource, the dependency order of a request and the removal order of recorded resources,
and the atomic write (a temporary file renamed over the target) every stored file goes through.
"""

from __future__ import annotations

import graphlib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.errors import INVALID_REQUEST, failure
from agents.models import ProvisionedResource, ResourceSpec

STATE_DIR = ".state"
STATE_FILE = "state.json"
LOCK_FILE = "lock"
PORTS_LOCK_FILE = "ports.lock"
RUNS_DIR = "runs"
TRASH_DIR = "trash"
TRASH_RETENTION_SECONDS = 35 * 24 * 3600
"""Longer than a run can wait at its gates before its compensation may still need what it deleted."""


class _Stored(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Record(_Stored):
    """One resource as the state knows it."""

    kind: str
    name: str
    address: str
    spec: dict[str, Any] = Field(default_factory=dict, description="The attributes that matter for its kind.")
    depends_on: list[str] = Field(default_factory=list)
    port: int | None = None
    created_by: str
    updated_by: str
    created_at_ns: int = 0
    updated_at_ns: int = 0


class State(_Stored):
    version: int = 1
    project: str
    environment: str
    serial: int = 0
    written_by: str | None = None
    declared: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, Record] = Field(default_factory=dict)


class Journal(_Stored):
    """What one run did to a state, written before each change: enough to undo it."""

    run_id: str
    project: str
    environment: str
    status: Literal["applying", "applied", "compensated"] = "applying"
    declared_before: list[dict[str, Any]] = Field(default_factory=list)
    before: dict[str, Record | None] = Field(default_factory=dict, description="In the order first touched.")
    applied: list[str] = Field(default_factory=list, description="`action name`, in the order applied.")
    result: list[ProvisionedResource] = Field(default_factory=list)


def attributes(spec: ResourceSpec) -> dict[str, Any]:
    """What is compared between the desired and the recorded resource."""
    if spec.kind == "stream":
        return {
            "subjects": sorted(spec.subjects),
            "max_bytes": spec.max_bytes,
            "max_age_seconds": spec.max_age_seconds,
            "storage": spec.storage,
        }
    if spec.kind == "kv":
        return {
            "history": spec.history,
            "max_bytes": spec.max_bytes,
            "max_age_seconds": spec.max_age_seconds,
            "storage": spec.storage,
        }
    return {}


def dependency_order(specs: list[ResourceSpec]) -> list[str]:
    """The names of ``specs`` in an order where each comes after what it depends on (ties: as declared).

    Raises ``InvalidRequest`` for a name declared twice, a dependency on an undeclared name, or a cycle, naming
    the resources.
    """
    position: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.name in position:
            other = specs[position[spec.name]]
            raise failure(INVALID_REQUEST, f"{spec.name!r} is declared twice ({other.kind} and {spec.kind})")
        position[spec.name] = i
    missing = [f"{s.name} depends on {d}" for s in specs for d in s.depends_on if d not in position]
    if missing:
        raise failure(INVALID_REQUEST, f"missing dependencies: {'; '.join(missing)}, which are not declared")
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for spec in specs:
        sorter.add(spec.name, *spec.depends_on)
    try:
        sorter.prepare()
    except graphlib.CycleError as err:
        cycle = list(err.args[1])
        raise failure(INVALID_REQUEST, f"dependency cycle: {' -> '.join(cycle)}") from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def _removal_order(records: dict[str, Record], names: set[str]) -> list[str]:
    """``names`` with dependents first (the reverse of the recorded dependency order)."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name in sorted(names):
        sorter.add(name, *[d for d in records[name].depends_on if d in names])
    try:
        return list(reversed(list(sorter.static_order())))
    except graphlib.CycleError:  # a state from before dependencies: any order
        return sorted(names)


def _atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
