"""Prometheus metrics of the transport shell.

Design notes: docs/architecture.md (Module notes).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PUBLISHED = Counter(
    "akma_broker_published_total",
    "Publishes by exchange and outcome (confirmed, returned, nacked, timeout, refused, retried).",
    ["exchange", "outcome"],
)
CONSUMED = Counter(
    "akma_broker_consumed_total",
    "Deliveries handled, by queue and outcome (ack, dead_letter, requeue).",
    ["queue", "outcome"],
)
REJECTED = Counter(
    "akma_broker_rejected_total",
    "Deliveries dead-lettered by our consumers, by queue and reason code.",
    ["queue", "reason"],
)
HANDLER_SECONDS = Histogram(
    "akma_broker_handler_seconds",
    "Time spent in message handlers, by queue.",
    ["queue"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
IN_FLIGHT = Gauge(
    "akma_broker_in_flight",
    "Deliveries currently being handled, by queue.",
    ["queue"],
)
