"""Errors of the AKMA contract, and the reasons a ``Rejected`` answer can carry on the wire.

Every exception has a stable, machine-readable ``code``: codes go into audit logs, metric labels
and dead-letter headers, so they never change once released. A remote AF never sees them
verbatim; the network answers any ``InvalidRequestError`` with
``Rejected(reason="invalid_request")``.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = [
    "REJECT_INVALID_REQUEST",
    "REJECT_RATE_LIMITED",
    "REJECT_REASONS",
    "REJECT_UNAUTHORIZED",
    "REMOVAL_REASONS",
    "ContractError",
    "InvalidAfIdError",
    "InvalidAkidError",
    "InvalidBodyError",
    "InvalidIdentifierError",
    "InvalidKeyError",
    "InvalidRequestError",
    "InvalidSupiError",
    "RejectReason",
    "RemovalReason",
    "UnknownMessageTypeError",
]

#: Why the network refused a request: stop (``unauthorized``), back off (``rate_limited``) or fix
#: the request (``invalid_request``); HTTP 403/429/400 in TS 29.522.
RejectReason = Literal["unauthorized", "rate_limited", "invalid_request"]
REJECT_UNAUTHORIZED: Final[RejectReason] = "unauthorized"
REJECT_RATE_LIMITED: Final[RejectReason] = "rate_limited"
REJECT_INVALID_REQUEST: Final[RejectReason] = "invalid_request"
REJECT_REASONS: Final[frozenset[str]] = frozenset(get_args(RejectReason))

#: Why an AKMA context is gone, as a context-removed notification tells the AF.
RemovalReason = Literal["removed", "service_disabled"]
REMOVAL_REASONS: Final[frozenset[str]] = frozenset(get_args(RemovalReason))


class ContractError(Exception):
    """Root of every error raised by ``akma_contract``."""

    code: str = "contract_error"
    # A body that breaks the contract is its sender's fault (``broker_adapter.errors.Fault``).
    fault: str = "remote"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code}: {detail}" if detail else self.code)
        self.detail = detail


class InvalidRequestError(ContractError):
    """A request is malformed or inconsistent; retrying it unchanged cannot succeed."""

    code = "invalid_request"


class UnknownMessageTypeError(InvalidRequestError):
    """An envelope names a message type the contract does not define."""

    code = "unknown_message_type"


class InvalidBodyError(InvalidRequestError):
    """A message body is not valid msgpack or does not match its model."""

    code = "invalid_body"


class InvalidKeyError(InvalidRequestError):
    """Key material has the wrong type or length (every AKMA key here is 256 bits)."""

    code = "invalid_key"


class InvalidIdentifierError(InvalidRequestError):
    """A SUPI, A-KID or AF_ID is malformed."""

    code = "invalid_identifier"


class InvalidSupiError(InvalidIdentifierError):
    """A SUPI is malformed or of a type this implementation does not derive keys for."""

    code = "invalid_supi"


class InvalidAkidError(InvalidIdentifierError):
    """An A-KID is not a well-formed NAI of the form ``<RID>.<A-TID>@<realm>``."""

    code = "invalid_akid"


class InvalidAfIdError(InvalidIdentifierError):
    """An AF_ID (FQDN || 5-octet Ua* protocol id) is malformed."""

    code = "invalid_af_id"
