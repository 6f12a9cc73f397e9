"""One exception root for the package; every subclass carries a stable, machine-readable code.

Codes are what goes into dead-letter headers, metrics labels and audit logs. A remote peer
never sees them: it only ever learns "rejected" (see ``RejectedError``).
"""

from __future__ import annotations


class BrokerAdapterError(Exception):
    """Root of every error raised by ``broker_adapter``."""

    code: str = "broker_adapter_error"
    # True for failures of our infrastructure (the link, the replay store), which say nothing
    # about the message: a consumer requeues it instead of dead-lettering it.
    transient: bool = False

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code}: {detail}" if detail else self.code)
        self.detail = detail


# ---- transport (I/O shell) -------------------------------------------------------------------


class TransportError(BrokerAdapterError):
    code = "transport_error"
    transient = True


class BrokerConfigError(TransportError):
    """Settings or key material for the broker connection are missing or invalid."""

    code = "broker_config"
    transient = False


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
