"""The AKMA message contract between the AUSF, the network (AAnF/NEF) and AFs.

Each model maps one to one to a TS 29.535 (Naanf_AKMA) or TS 29.522 (3gpp-akma) data type; the
table is in docs/akma.md. A model travels as the body of a sealed envelope whose message type is
the model's ``MSG_TYPE``. Bodies are msgpack maps with Python field names; byte fields are msgpack
``bin`` (never hex) and times are integer unix milliseconds (``*_ms`` fields), the same unit as the
envelope's timestamp, so no time zone or ISO parsing can disagree between the two ends.

Both sides import this module; it depends on pydantic, msgpack and the rest of
``akma_contract`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, ClassVar, Final, Self

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from akma_contract.errors import (
    InvalidBodyError,
    RejectReason,
    RemovalReason,
    UnknownMessageTypeError,
)
from akma_contract.identifiers import AfId, AKid, Gpsi, Key256, Supi

__all__ = [
    "MAX_BODY_LEN",
    "MESSAGE_TYPES",
    "REPLY_TYPES",
    "AkmaAfKeyData",
    "AkmaAfKeyRequest",
    "AkmaKeyInfo",
    "AkmaMessage",
    "AnchorKeyRegistered",
    "ContextRemoveDone",
    "ContextRemovedNotification",
    "CtxRemove",
    "KeyNotFound",
    "Rejected",
    "decode_body",
]

#: Every body here is a few hundred octets; anything far larger is refused before unpacking.
MAX_BODY_LEN: Final = 16 * 1024

# Bounded so every valid value also packs into a msgpack integer.
UnixMs = Annotated[int, Field(ge=0, le=2**63 - 1)]


class AkmaMessage(BaseModel):
    """Base of every message: immutable, unknown fields refused, no type coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    MSG_TYPE: ClassVar[str]

    def to_body(self) -> bytes:
        """Encode as a msgpack map; absent optional fields are left out, like absent JSON keys."""
        packed: bytes = msgpack.packb(self.model_dump(exclude_none=True), use_bin_type=True)
        return packed

    @classmethod
    def from_body(cls, body: bytes) -> Self:
        """Decode a body of this type; any failure is an ``InvalidBodyError`` and nothing else."""
        if not isinstance(body, bytes):
            raise InvalidBodyError("body must be bytes")
        if len(body) > MAX_BODY_LEN:
            raise InvalidBodyError(f"body longer than {MAX_BODY_LEN} octets")
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise InvalidBodyError(f"not msgpack: {type(exc).__name__}") from None
        if not isinstance(obj, dict):
            raise InvalidBodyError("body must be a msgpack map")
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise InvalidBodyError(f"{cls.MSG_TYPE}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """Field locations and error kinds only: pydantic's own text quotes the input values, and
    those may be key material that must never reach logs or dead-letter headers."""
    parts = [".".join(str(p) for p in err["loc"])[:40] + ":" + err["type"] for err in exc.errors()]
    return "; ".join(parts)[:200]


# ---- Naanf_AKMA_AnchorKey_Register (AUSF -> AAnF) ------------------------------------------


class AkmaKeyInfo(AkmaMessage):
    """TS 29.535 ``AkmaKeyInfo``: the AUSF registers a UE's AKMA context.

    ``supi`` is required here (29.535 allows supi or gpsi) because the AAnF keys contexts by SUPI:
    the latest context per SUPI replaces the old one and ``CtxRemove`` names a SUPI. ``gpsi`` is
    optional; without it an external AF receives no UE identity.
    """

    MSG_TYPE: ClassVar[str] = "akma.anchor_key.register"

    supi: Supi
    gpsi: Gpsi | None = None
    a_kid: AKid
    k_akma: Key256


class AnchorKeyRegistered(AkmaMessage):
    """Success answer to ``AkmaKeyInfo`` (HTTP 204 in 29.535); echoes the stored A-KID."""

    MSG_TYPE: ClassVar[str] = "akma.anchor_key.registered"

    a_kid: AKid


# ---- Naanf_AKMA_ApplicationKey_Get / 3gpp-akma (AF -> network) -------------------------------


class AkmaAfKeyRequest(AkmaMessage):
    """TS 29.535/29.522 ``AkmaAfKeyRequest``. ``anon_ind`` selects the anonymous variant.

    There is no notification-destination field: the network notifies the AF through the AF's own
    broker inbox, whose identity the envelope has already proven.
    """

    MSG_TYPE: ClassVar[str] = "akma.af_key.request"

    af_id: AfId
    a_kid: AKid
    anon_ind: bool = False


class AkmaAfKeyData(AkmaMessage):
    """TS 29.535/29.522 ``AkmaAfKeyData``: K_AF, its expiry, and at most the identity policy allows.

    An internal AF may get ``supi``; an external AF only ``gpsi``; the anonymous variant neither.
    """

    MSG_TYPE: ClassVar[str] = "akma.af_key.data"

    k_af: Key256
    expiry_ms: UnixMs
    supi: Supi | None = None
    gpsi: Gpsi | None = None


class KeyNotFound(AkmaMessage):
    """The "no content" answer: no usable AKMA context for that A-KID (unknown or expired)."""

    MSG_TYPE: ClassVar[str] = "akma.af_key.not_found"


class Rejected(AkmaMessage):
    """Opaque refusal. The coarse reason only tells the caller whether to stop, back off or fix
    its request (HTTP 403/429/400 in 29.522); the detailed cause stays in the network's audit log.
    """

    MSG_TYPE: ClassVar[str] = "akma.rejected"

    reason: RejectReason


# ---- Naanf_AKMA_Context_Remove (AUSF -> AAnF) and its notification (AAnF -> AF) --------------


class CtxRemove(AkmaMessage):
    """TS 29.535 ``CtxRemove``: delete the AKMA context of a SUPI."""

    MSG_TYPE: ClassVar[str] = "akma.context.remove"

    supi: Supi


class ContextRemoveDone(AkmaMessage):
    """Success answer to ``CtxRemove`` ("done, no body"; HTTP 204). Also sent when nothing was
    stored, so a redelivered removal is answered the same way as the first one."""

    MSG_TYPE: ClassVar[str] = "akma.context.remove.done"


class ContextRemovedNotification(AkmaMessage):
    """AAnF -> AF: the AKMA context behind ``a_kid`` is gone; drop any K_AF cached for it."""

    MSG_TYPE: ClassVar[str] = "akma.context.removed"

    a_kid: AKid
    reason: RemovalReason


_ALL: Final[tuple[type[AkmaMessage], ...]] = (
    AkmaKeyInfo,
    AnchorKeyRegistered,
    AkmaAfKeyRequest,
    AkmaAfKeyData,
    KeyNotFound,
    Rejected,
    CtxRemove,
    ContextRemoveDone,
    ContextRemovedNotification,
)

#: Envelope message type -> model. Read-only, so no caller can widen what we accept.
MESSAGE_TYPES: Final[Mapping[str, type[AkmaMessage]]] = MappingProxyType(
    {model.MSG_TYPE: model for model in _ALL}
)

#: Request message type -> the message types that may answer it. A client checks a response
#: against this before trusting it, so a valid message of the wrong kind is not mistaken for one.
REPLY_TYPES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        AkmaKeyInfo.MSG_TYPE: frozenset({AnchorKeyRegistered.MSG_TYPE, Rejected.MSG_TYPE}),
        AkmaAfKeyRequest.MSG_TYPE: frozenset(
            {AkmaAfKeyData.MSG_TYPE, KeyNotFound.MSG_TYPE, Rejected.MSG_TYPE}
        ),
        CtxRemove.MSG_TYPE: frozenset({ContextRemoveDone.MSG_TYPE, Rejected.MSG_TYPE}),
    }
)


def decode_body(msg_type: str, body: bytes) -> AkmaMessage:
    """Decode ``body`` as the model registered for ``msg_type``.

    Raises ``UnknownMessageTypeError`` for a type outside the contract and ``InvalidBodyError``
    for a body that does not decode to that model; nothing else for any input.
    """
    model = MESSAGE_TYPES.get(msg_type) if isinstance(msg_type, str) else None
    if model is None:
        raise UnknownMessageTypeError(f"unknown message type {str(msg_type)[:64]!r}")
    return model.from_body(body)
