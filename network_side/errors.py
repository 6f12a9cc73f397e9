"""One exception root for ``network_side``; every subclass carries a stable, machine-readable code.

Codes go into audit logs, metric labels and dead-letter headers, so they never change once
released. A remote AF never sees them verbatim: the service maps them to the three coarse
answers of the message contract (``KeyNotFound`` or ``Rejected`` with a coarse reason).

This module imports nothing but the standard library, so the message contract
(``network_side.messages``) can use it without pulling in any network-side internals.
"""

from __future__ import annotations


class NetworkSideError(Exception):
    """Root of every error raised by ``network_side``."""

    code: str = "network_side_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code}: {detail}" if detail else self.code)
        self.detail = detail


# ---- malformed input: the caller's fault ---------------------------------------------------


class InvalidRequestError(NetworkSideError):
    """A request is malformed or inconsistent; retrying it unchanged cannot succeed."""

    code = "invalid_request"


class InvalidSupiError(InvalidRequestError):
    """A SUPI is malformed or of a type this implementation does not derive keys for."""

    code = "invalid_supi"


class InvalidGpsiError(InvalidRequestError):
    code = "invalid_gpsi"


class InvalidAkidError(InvalidRequestError):
    """An A-KID is not a well-formed NAI in the format of ``network_side.akid``."""

    code = "invalid_akid"


class InvalidAfIdError(InvalidRequestError):
    """An AF_ID (FQDN || 5-octet Ua* protocol id) is malformed."""

    code = "invalid_af_id"


class InvalidKeyError(InvalidRequestError):
    """Key material has the wrong type or length (every AKMA key here is 256 bits)."""

    code = "invalid_key"


class UnknownMessageTypeError(InvalidRequestError):
    """An envelope names a message type the contract does not define."""

    code = "unknown_message_type"


class InvalidBodyError(InvalidRequestError):
    """A message body is not valid msgpack or does not match its model."""

    code = "invalid_body"


# ---- lookups: "no content" answers ---------------------------------------------------------


class NotFoundError(NetworkSideError):
    """The requested material does not exist (answered as "no content", never as a crash)."""

    code = "not_found"


class UnknownAkidError(NotFoundError):
    code = "unknown_akid"


class ContextExpiredError(NotFoundError):
    """The A-KID is known but its AKMA context has expired; to the AF this is "not found"."""

    code = "context_expired"


# ---- policy ---------------------------------------------------------------------------------


class UnauthorizedError(NetworkSideError):
    """The authenticated requester may not perform this operation (or use this AF_ID)."""

    code = "unauthorized"


class RateLimitedError(NetworkSideError):
    code = "rate_limited"


class ConflictError(NetworkSideError):
    """A registration would overwrite another subscriber's context (same A-KID, other SUPI)."""

    code = "conflict"


# ---- our own configuration and storage --------------------------------------------------------


class ConfigError(NetworkSideError):
    """A configuration file or value (AF registry, lifetimes, store key) is invalid."""

    code = "config_error"


class StoreError(NetworkSideError):
    code = "store_error"


class StoreIntegrityError(StoreError):
    """A stored K_AKMA failed authenticated decryption: wrong master key or a tampered row."""

    code = "store_integrity"
