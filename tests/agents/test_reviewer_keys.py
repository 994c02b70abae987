"""The reviewers' public keys as the worker reads them: two names that are one reviewer, and an empty setting."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agents.reviewers import KeyFileError, ReviewerKeysAgent, load_public_keys, reviewer_identity
from events.models import normalise_identity
from quantum.settings import Settings
from tests.cli.support import one_line_error, quantum
from tests.conftest import free_port


def public_key() -> str:
    """A fresh Ed25519 public key, base64 of its 32 raw bytes (one of the forms a key file may hold)."""
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "reviewers"
    folder.mkdir()
    for name in names:
        (folder / f"{name}.pub").write_text(public_key())
    return folder


@pytest.mark.parametrize(
    "other",
    ["Erin", "ｅｒｉｎ", "ERIN ", "er\u200bin"],
    ids=["case", "full-width", "trailing-space", "zero-width-space"],
)
def test_two_key_files_of_one_reviewer_are_refused_naming_both(tmp_path: Path, other: str) -> None:
    folder = key_folder(tmp_path, "erin", other)
    with pytest.raises(KeyFileError) as refused:
        load_public_keys(folder)
    message = str(refused.value)
    assert str(folder / "erin.pub") in message and str(folder / f"{other}.pub") in message
    assert "'erin'" in message


def test_two_entries_of_one_reviewer_in_a_json_file_are_refused(tmp_path: Path) -> None:
    named = tmp_path / "keys.json"
    named.write_text(f'{{"erin": "{public_key()}", "Erin": "{public_key()}"}}')
    with pytest.raises(KeyFileError, match=r"entry 'erin' and .*entry 'Erin' both name the reviewer 'erin'"):
        load_public_keys(named)
    named.write_text(f'{{"erin": "{public_key()}", "erin": "{public_key()}"}}')  # one name written twice
    with pytest.raises(KeyFileError, match="both name the reviewer 'erin'"):
        load_public_keys(named)


def test_distinct_reviewers_load_under_the_names_of_their_files(tmp_path: Path) -> None:
    assert set(load_public_keys(key_folder(tmp_path, "erin", "Bob", "carol"))) == {"erin", "Bob", "carol"}


@pytest.mark.parametrize(
    "name", ["Erin", "ｅｒｉｎ", " ANN  lee ", "er\u200bin", "Ǆ", "ß", "ﬁ", "\u2028x", "İ", "Å", "x\u00a0y", ""]
)
def test_reviewer_names_compare_as_the_runs_compare_them(name: str) -> None:
    assert reviewer_identity(name) == normalise_identity(name)


def test_an_empty_setting_means_no_keys_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_folder(tmp_path, "mallory")
    monkeypatch.chdir(tmp_path / "reviewers")  # a *.pub where the worker starts
    monkeypatch.setenv("QUANTUM_REVIEWER_KEYS", "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.reviewer_keys is None
    assert not ReviewerKeysAgent(settings.reviewer_keys)._keys  # noqa: SLF001 - what the activity will serve


def test_the_worker_refuses_to_start_with_two_keys_of_one_reviewer(
    tmp_path: Path, temporal_address: str, nats_url: str
) -> None:
    folder = key_folder(tmp_path, "erin", "Erin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env.update(
        QUANTUM_DATA_DIR=str(tmp_path / "data"),
        QUANTUM_TEMPORAL_ADDRESS=temporal_address,
        QUANTUM_NATS_URL=nats_url,
        QUANTUM_METRICS_PORT=str(free_port()),
        QUANTUM_TASK_QUEUE=f"keys-{tmp_path.name}",
        QUANTUM_REVIEWER_KEYS=str(folder),
        COLUMNS="400",
    )
    done = quantum(env, "worker", timeout=90)
    assert done.returncode == 1
    line = one_line_error(done)
    assert line.startswith("error: QUANTUM_REVIEWER_KEYS: ")
    assert str(folder / "Erin.pub") in line and str(folder / "erin.pub") in line and "'erin'" in line
