"""AF worker configuration: environment (``AKMA_AF_*``, nested with ``__``) and a TOML file
named by ``AKMA_AF_CONFIG_FILE`` (the environment wins)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from akma_contract.identifiers import UA_TLS13_SHARED_KEY
from akma_contract.topology import NETWORK_IDENTITY
from broker_adapter.config import EnvAndTomlSettings
from broker_adapter.runtime import SecuritySettings
from broker_adapter.transport import BrokerSettings
from broker_adapter.worker import EventLoopChoice


class AfSettings(EnvAndTomlSettings):
    model_config = SettingsConfigDict(
        env_prefix="AKMA_AF_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    broker: BrokerSettings
    security: SecuritySettings
    # The AF_ID this AF asks keys for: its FQDN and the Ua* security protocol id (hex, 5 octets).
    af_fqdn: str
    ua_protocol_id: str = UA_TLS13_SHARED_KEY.hex()
    network: str = NETWORK_IDENTITY
    request_timeout_s: float = Field(default=5.0, gt=0)
    request_attempts: int = Field(default=3, ge=1, le=10)
    # Local port of the Ua* stand-in where UEs present their A-KID (None: no Ua endpoint).
    ua_port: int | None = None
    # Demo only: the Ua endpoint also returns K_AF so the demo can print it.
    demo_reveal_keys: bool = False
    metrics_port: int | None = None
    log_level: str = "INFO"
    # "auto": uvloop where installed, else asyncio's loop (broker_adapter.worker.run_worker).
    event_loop: EventLoopChoice = "auto"
