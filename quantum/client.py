"""Connecting to Temporal with the product's data converter.

Everything that talks to Temporal (the worker, the bridge, the CLI) connects here, so the converter, and with it the
encryption of payloads, is the same everywhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from temporalio.client import Client
from temporalio.common import HeaderCodecBehavior
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from quantum.codec import EncryptionCodec
from quantum.settings import Settings


def data_converter(settings: Settings) -> DataConverter:
    """JSON payloads via pydantic; with codec keys, each payload encrypted (:class:`~quantum.codec.EncryptionCodec`),
    and failures' messages and stack traces moved into an encrypted payload too, since a failure message can carry a
    reviewer's comment or a line of generated code.

    Raises:
        CodecError: The keys are set but cannot be used.
    """
    keyring = settings.codec_keyring()
    if keyring is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keyring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def connect(settings: Settings, *, address: str | None = None, runtime: Runtime | None = None) -> Client:
    """Connect to the Temporal frontend named by the settings (or ``address``) with :func:`data_converter`;
    ``runtime``: the Temporal runtime whose metrics the process exposes (default: the SDK's)."""
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        address or settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        header_codec_behavior=HeaderCodecBehavior.CODEC,
        tls=tls_config(settings) or settings.temporal_tls or bool(api_key),
        api_key=api_key,
        runtime=runtime,
    )


def tls_config(settings: Settings) -> TLSConfig | None:
    """The mTLS configuration from the certificate files the settings name (None: none named)."""
    if not (settings.temporal_tls_cert or settings.temporal_tls_key or settings.temporal_tls_ca):
        return None
    if bool(settings.temporal_tls_cert) != bool(settings.temporal_tls_key):
        raise ValueError("QUANTUM_TEMPORAL_TLS_CERT and QUANTUM_TEMPORAL_TLS_KEY go together: set both or neither")

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    return TLSConfig(
        client_cert=read(settings.temporal_tls_cert),
        client_private_key=read(settings.temporal_tls_key),
        server_root_ca_cert=read(settings.temporal_tls_ca),
    )
