"""One exception root for the AF side; each subclass carries a stable code."""

from __future__ import annotations


class AsSideError(Exception):
    code: str = "as_side_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code}: {detail}" if detail else self.code)
        self.detail = detail


class KeyNotFoundError(AsSideError):
    """The network has no (live) AKMA context for this A-KID: the UE must re-authenticate."""

    code = "key_not_found"


class KeyRequestRejectedError(AsSideError):
    """The network refused the request (``reason``: unauthorized, rate_limited, invalid_request)."""

    code = "key_request_rejected"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyRequestTimeoutError(AsSideError):
    """No answer after every retry; safe to call again (the network deduplicates)."""

    code = "key_request_timeout"


class UnexpectedReplyError(AsSideError):
    """A verified message that is not a valid answer to the request (wrong type or body)."""

    code = "unexpected_reply"
