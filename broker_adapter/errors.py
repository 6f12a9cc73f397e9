"""One exception root for the package; every subclass carries a stable code and says whose fault.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

import enum


class Fault(enum.Enum):
    REMOTE = "remote"
    LOCAL = "local"


class BrokerAdapterError(Exception):
    """Root of every error raised by ``broker_adapter``."""

    code: str = "broker_adapter_error"
    fault: Fault = Fault.LOCAL

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code}: {detail}" if detail else self.code)
        self.detail = detail


def fault_of(exc: BaseException) -> Fault:
    """Whose fault ``exc`` is; anything that does not say is a bug of ours. A package that does
    not depend on this one may say it with the plain strings "remote" and "local"."""
    fault = getattr(type(exc), "fault", None)
    if isinstance(fault, Fault):
        return fault
    return Fault.REMOTE if fault == Fault.REMOTE.value else Fault.LOCAL


def code_of(exc: BaseException) -> str:
    code = getattr(type(exc), "code", None)
    return code if isinstance(code, str) else "internal_error"


class TransportError(BrokerAdapterError):
    """The broker link or the broker's answer to a publish: ours to retry."""

    code = "transport_error"


class BrokerConfigError(TransportError):
    """Settings or key material for the broker connection are missing or invalid."""

    code = "broker_config"


class PublishNackedError(TransportError):
    """The broker negatively confirmed a publish: the message was not taken."""

    code = "publish_nacked"


class PublishReturnedError(TransportError):
    """The broker returned a mandatory publish: nothing was routed to a queue."""

    code = "publish_returned"


class PublishTimeoutError(TransportError):
    """No confirm arrived in time; the publish may or may not have been taken."""

    code = "publish_timeout"


class RequestTimeoutError(TransportError):
    """A request/response round trip got no answer in time."""

    code = "request_timeout"


class UnexpectedResponderError(BrokerAdapterError):
    """A trusted party answered a request that was sent to another party."""

    code = "unexpected_responder"
    fault = Fault.REMOTE
