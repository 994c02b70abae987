"""Keys and settings for the codec's tests."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from quantum.settings import Settings


def new_key() -> str:
    """A fresh AES-256 key, base64, as the keyring's JSON holds it."""
    return base64.b64encode(os.urandom(32)).decode()


def keys_json(*key_ids: str) -> tuple[str, dict[str, str]]:
    """The JSON of a keyring with a fresh key for each id, and the keys by id."""
    keys = {key_id: new_key() for key_id in key_ids}
    return json.dumps(keys), keys


CODEC_SETTINGS = ("codec_keys", "codec_keys_file", "codec_key_id", "codec_server_token")


def settings(**values: Any) -> Settings:
    """Settings whose codec part comes from ``values`` only, whatever ``QUANTUM_CODEC_*`` the environment holds."""
    return Settings(_env_file=None, **{**dict.fromkeys(CODEC_SETTINGS), **values})
