"""Settings: QUANTUM_* variables, the model endpoint or the offline provider, and keys that stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantum.settings import Settings


def test_no_model_configured_means_the_offline_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("QUANTUM_LLM_BASE_URL", "QUANTUM_LLM_MODEL", "QUANTUM_LLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert Settings(_env_file=None).llm_config() is None  # type: ignore[call-arg]


def test_the_model_endpoint_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTUM_LLM_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("QUANTUM_LLM_MODEL", "qwen-coder")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-variable")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    config = settings.llm_config()
    assert config is not None
    assert (config.base_url, config.model, config.api_key) == (
        "http://127.0.0.1:8000/v1",
        "qwen-coder",
        "sk-from-openai-variable",
    )
    assert "sk-from-openai-variable" not in repr(settings) and "sk-from-openai-variable" not in repr(config)


def test_a_key_and_a_model_without_a_url_mean_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUANTUM_LLM_BASE_URL", raising=False)
    settings = Settings(llm_model="gpt-x", llm_api_key="sk-1", _env_file=None)  # type: ignore[call-arg]
    config = settings.llm_config()
    assert config is not None and config.base_url == "https://api.openai.com/v1"


def test_addresses_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTUM_TEMPORAL_ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("QUANTUM_NATS_URL", "nats://a:4222,nats://b:4222")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.temporal_host_port == ("temporal.example", 7233)
    assert settings.nats_host_port == ("a", 4222)


def test_mtls_files_become_the_temporal_tls_configuration(tmp_path: Path) -> None:
    from quantum.client import tls_config

    cert, key, ca = (tmp_path / name for name in ("client.pem", "client.key", "ca.pem"))
    for path in (cert, key, ca):
        path.write_bytes(f"-----{path.name}-----\n".encode())
    settings = Settings(temporal_tls_cert=cert, temporal_tls_key=key, temporal_tls_ca=ca, _env_file=None)  # type: ignore[call-arg]
    tls = tls_config(settings)
    assert tls is not None
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert) == (
        cert.read_bytes(),
        key.read_bytes(),
        ca.read_bytes(),
    )
    assert tls_config(Settings(_env_file=None)) is None  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="go together"):
        tls_config(Settings(temporal_tls_cert=cert, _env_file=None))  # type: ignore[call-arg]


async def test_a_nats_credentials_file_is_named_for_every_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    creds = tmp_path / "user.creds"
    monkeypatch.setenv("QUANTUM_NATS_CREDS", str(creds))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.nats_credentials == str(creds)
    from quantum.worker import build_agents

    agents = build_agents(settings.model_copy(update={"data_dir": tmp_path / "data"}))
    try:
        assert agents.infra.nats_credentials == str(creds)
        assert agents.publisher._connection.credentials == str(creds)
        assert agents.audit._connection.credentials == str(creds)
    finally:
        await agents.close()
