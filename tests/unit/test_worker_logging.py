"""Worker logs are one JSON object per line; audit records are nested, not quoted JSON."""

from __future__ import annotations

import json
import logging

from broker_adapter.worker import JsonFormatter
from network_side.audit import AuditLog


def test_audit_records_nest_in_json_logs() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("akma.audit.test")
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    AuditLog(lambda: 1234, logger).record("af_key.get", "issued", requester="af1.example.com")
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["msg"] == "audit"
    assert line["audit"] == {
        "ts_ms": 1234, "event": "af_key.get", "outcome": "issued", "requester": "af1.example.com"
    }
    # A plain handler still gets the JSON line as the message.
    assert json.loads(records[0].getMessage())["event"] == "af_key.get"


def test_extras_become_fields() -> None:
    record = logging.makeLogRecord({"name": "x", "msg": "dead-lettered", "levelno": 30,
                                    "levelname": "WARNING", "reason": "bad_signature"})
    line = json.loads(JsonFormatter().format(record))
    assert line["reason"] == "bad_signature" and line["level"] == "warning"
