"""One exception root for ``network_side``; every subclass carries a stable, machine-readable code.

Codes go into audit logs, metric labels and dead-letter headers, so they never change once
released. A remote AF never sees them verbatim: the service maps them to the coarse answers of
the message contract (``KeyNotFound`` or ``Rejected`` with a coarse reason).

Malformed input (the caller's fault) is not here: it is the contract's ``InvalidRequestError``
and its subclasses (``akma_contract.errors``), which both sides raise and catch alike.

Whose fault (``broker_adapter.errors.Fault``) decides what the receive path does with an error
that escapes a handler: the message's is dead-lettered with its code, ours is requeued.
"""

from __future__ import annotations

from broker_adapter.errors import Fault


class NetworkSideError(Exception):
    """Root of every error raised by ``network_side`` for its own reasons."""

    code: str = "network_side_error"
    fault: Fault = Fault.LOCAL

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code}: {detail}" if detail else self.code)
        self.detail = detail


# ---- lookups: "no content" answers ---------------------------------------------------------


class NotFoundError(NetworkSideError):
    """The requested material does not exist (answered as "no content", never as a crash)."""

    code = "not_found"
    fault = Fault.REMOTE


class UnknownAkidError(NotFoundError):
    code = "unknown_akid"


class ContextExpiredError(NotFoundError):
    """The A-KID is known but its AKMA context has expired; to the AF this is "not found"."""

    code = "context_expired"


# ---- policy ---------------------------------------------------------------------------------


class ConflictError(NetworkSideError):
    """A registration would overwrite another subscriber's context (same A-KID, other SUPI)."""

    code = "conflict"
    fault = Fault.REMOTE


# ---- our own configuration and storage --------------------------------------------------------


class ConfigError(NetworkSideError):
    """A configuration file or value (AF registry, lifetimes, store key) is invalid."""

    code = "config_error"


class StoreError(NetworkSideError):
    code = "store_error"


class StoreIntegrityError(StoreError):
    """A stored K_AKMA failed authenticated decryption: wrong master key or a tampered row."""

    code = "store_integrity"
