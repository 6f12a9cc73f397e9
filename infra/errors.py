"""One exception root for ``infra``; every subclass carries a stable, machine-readable code."""

from __future__ import annotations


class InfraError(Exception):
    """Root of every error raised by ``infra`` (PKI tooling, broker config, local broker)."""

    code: str = "infra_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code}: {detail}" if detail else self.code)
        self.detail = detail


class PkiError(InfraError):
    """Key material is missing, malformed, or does not match what was asked for."""

    code = "pki_error"


class InvalidIdentityError(PkiError):
    """A party name is not a usable identity (it becomes a file path and a broker user name)."""

    code = "invalid_identity"


class BrokerNotInstalledError(InfraError):
    """The rabbitmq-server package is not installed on this machine."""

    code = "rabbitmq_not_installed"


class BrokerStartError(InfraError):
    """The local broker node did not come up (the message carries the log tail)."""

    code = "broker_start_failed"


class BrokerStateError(InfraError):
    """The launcher's state file is missing or does not describe a node we started."""

    code = "broker_state"
