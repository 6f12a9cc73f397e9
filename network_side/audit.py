"""Audit log of every AAnF/NEF decision: one JSON object per line on the ``akma.audit`` logger.

Only scalar values (str, int, bool, None) are accepted, and field names that look like key
material are refused outright, so no code path can pass key bytes here, even by mistake: bytes
are not a str, and a key's hex or base64 text would need a field name such as ``k_af``. Where
the lines go (file, stdout, a collector) is the deployment's logging configuration, not ours.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Final

__all__ = ["AUDIT_LOGGER_NAME", "AuditLog", "AuditValue"]

AUDIT_LOGGER_NAME: Final = "akma.audit"

AuditValue = str | int | bool | None

# Field-name fragments that would only ever label key material. A name containing any of them is
# a programming error, caught the first time that path runs in a test.
_FORBIDDEN_FRAGMENTS: Final = ("key", "k_af", "k_akma", "k_ausf", "secret", "kaf")
_RESERVED: Final = frozenset({"ts_ms", "event", "outcome"})


# Names already checked. They come from our own code, never from input, so the set stays small.
_ALLOWED_NAMES: set[str] = set()


def _check_name(name: str) -> None:
    lowered = name.lower()
    if name in _RESERVED or any(fragment in lowered for fragment in _FORBIDDEN_FRAGMENTS):
        raise ValueError(f"audit field name {name!r} is reserved or looks like key material")
    _ALLOWED_NAMES.add(name)


class AuditLog:
    """Writes audit records. ``clock`` returns unix milliseconds (injected for tests)."""

    def __init__(self, clock: Callable[[], int], logger: logging.Logger | None = None) -> None:
        self._clock = clock
        self._logger = logger or logging.getLogger(AUDIT_LOGGER_NAME)

    def record(self, event: str, outcome: str, **fields: AuditValue) -> None:
        """Log one decision, e.g. ``record("af_key.get", "issued", requester="af1.example.com")``.

        Raises ``TypeError``/``ValueError`` for a non-scalar value or a key-like field name: an
        audit record that might leak a key is a bug to fail loudly on, never to write.
        """
        for name, value in fields.items():
            if name not in _ALLOWED_NAMES:
                _check_name(name)
            if value is not None and not isinstance(value, (str, int, bool)):
                raise TypeError(f"audit field {name!r} must be str, int, bool or None")
        if not self._logger.isEnabledFor(logging.INFO):
            return
        line = {"ts_ms": self._clock(), "event": event, "outcome": outcome}
        line.update({k: v for k, v in fields.items() if v is not None})
        # The message is the JSON line itself, so any plain handler writes valid JSON lines; the
        # same record rides in ``extra`` so a structured formatter can nest it instead of
        # quoting JSON inside JSON. The text is made only if a handler asks for it: the workers'
        # JSON formatter never does, and encoding every record twice was a tenth of the network
        # worker's CPU per key request (docs/benchmarks.md).
        self._logger.info(_JsonLine(line), extra={"audit": line})


class _JsonLine:
    """A log message that is a JSON object, encoded on first use (``str(record.msg)``)."""

    __slots__ = ("_line", "_text")

    def __init__(self, line: dict[str, object]) -> None:
        self._line = line
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = json.dumps(self._line, sort_keys=True, separators=(",", ":"))
        return self._text
