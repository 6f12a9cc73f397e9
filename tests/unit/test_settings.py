"""Worker settings come from the environment and a TOML file, the environment winning."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from as_side.settings import AfSettings
from network_side.errors import ConfigError
from network_side.settings import NetworkSettings, read_master_key


def _broker_env(monkeypatch: pytest.MonkeyPatch, prefix: str, tmp: Path) -> None:
    for key, value in {
        "BROKER__IDENTITY": "af1.example.com",
        "BROKER__CA_FILE": str(tmp / "ca.crt"),
        "BROKER__CERT_FILE": str(tmp / "tls.crt"),
        "BROKER__KEY_FILE": str(tmp / "tls.key"),
        "SECURITY__KEY_DIR": str(tmp),
        "SECURITY__TRUST_DIR": str(tmp),
    }.items():
        monkeypatch.setenv(prefix + key, value)


def test_af_settings_from_env_and_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _broker_env(monkeypatch, "AKMA_AF_", tmp_path)
    config = tmp_path / "af.toml"
    config.write_text('af_fqdn = "af1.example.com"\nrequest_attempts = 5\nua_port = 7000\n')
    monkeypatch.setenv("AKMA_AF_CONFIG_FILE", str(config))
    monkeypatch.setenv("AKMA_AF_UA_PORT", "7001")
    settings = AfSettings()  # type: ignore[call-arg]
    assert settings.af_fqdn == "af1.example.com"
    assert settings.request_attempts == 5  # from the file
    assert settings.ua_port == 7001  # the environment wins over the file
    assert settings.broker.identity == "af1.example.com"
    assert settings.broker.port == 5671


def test_unknown_keys_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _broker_env(monkeypatch, "AKMA_AF_", tmp_path)
    config = tmp_path / "af.toml"
    config.write_text('af_fqdn = "af1.example.com"\nrequest_atempts = 5\n')
    monkeypatch.setenv("AKMA_AF_CONFIG_FILE", str(config))
    with pytest.raises(ValidationError):
        AfSettings()  # type: ignore[call-arg]


def test_network_settings_and_master_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _broker_env(monkeypatch, "AKMA_NET_", tmp_path)
    key = tmp_path / "master.key"
    key.write_text("ab" * 32)
    key.chmod(0o600)
    monkeypatch.setenv("AKMA_NET_AF_REGISTRY", str(tmp_path / "reg.toml"))
    monkeypatch.setenv("AKMA_NET_MASTER_KEY_FILE", str(key))
    settings = NetworkSettings()  # type: ignore[call-arg]
    assert read_master_key(settings.master_key_file) == bytes([0xAB]) * 32
    key.chmod(0o644)
    with pytest.raises(ConfigError):
        read_master_key(key)  # readable by others: refused
    key.chmod(0o600)
    key.write_text("ab" * 16)
    with pytest.raises(ConfigError):
        read_master_key(key)
