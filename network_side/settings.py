"""Network worker configuration: environment (``AKMA_NET_*``, nested with ``__``) and a TOML file.

Example: ``AKMA_NET_BROKER__PORT=5671``, ``AKMA_NET_SECURITY__REPLAY_STORE=redis``. A TOML file
named by ``AKMA_NET_CONFIG_FILE`` supplies the same keys; the environment wins over the file.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from broker_adapter.config import EnvAndTomlSettings
from broker_adapter.runtime import SecuritySettings
from broker_adapter.transport import BrokerSettings
from broker_adapter.worker import EventLoopChoice
from network_side.errors import ConfigError

_MASTER_KEY_LEN = 32


class NetworkSettings(EnvAndTomlSettings):
    model_config = SettingsConfigDict(
        env_prefix="AKMA_NET_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    broker: BrokerSettings
    security: SecuritySettings
    af_registry: Path
    context_db: Path = Path("var/network/contexts.sqlite3")
    # 32 random bytes, hex, in a 0600 file: K_AKMA is encrypted at rest under it.
    master_key_file: Path
    context_lifetime_ms: int = Field(default=12 * 3600 * 1000, gt=0)
    k_af_lifetime_ms: int = Field(default=3600 * 1000, gt=0)
    prefetch: int = Field(default=64, ge=1)
    metrics_port: int | None = None
    log_level: str = "INFO"
    # "auto": uvloop where installed, else asyncio's loop (broker_adapter.worker.run_worker).
    event_loop: EventLoopChoice = "auto"


def read_master_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read master key from {path}: {exc}") from exc
    if len(key) != _MASTER_KEY_LEN:
        raise ConfigError(f"master key in {path} must be 32 bytes (64 hex digits)")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"master key file {path} must not be readable by group or others")
    return key
