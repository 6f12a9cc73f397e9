"""A small client for RabbitMQ's management HTTP API, as operators use it (HTTPS, admin password,
verified against the deployment CA). Used by the demo, the tests and ad-hoc operations."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request
from typing import Any
from urllib.parse import quote


class Management:
    def __init__(self, base_url: str, password: str, ca_file: str, user: str = "admin") -> None:
        self._base = base_url.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._ctx = ssl.create_default_context(cafile=ca_file)

    def call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        # The deployment's own https:// management base URL.
        request = urllib.request.Request(  # noqa: S310
            self._base + path,
            data=data,
            method=method,
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self._ctx, timeout=15) as response:  # noqa: S310
            body = response.read()
        return json.loads(body) if body else None

    @staticmethod
    def _q(vhost: str, queue: str) -> str:
        return f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}"

    def get_messages(
        self, vhost: str, queue: str, count: int = 100, *, requeue: bool = False
    ) -> list[dict[str, Any]]:
        """Fetch messages as 'Get messages' in the UI does (``requeue`` keeps them queued)."""
        mode = "ack_requeue_true" if requeue else "ack_requeue_false"
        result = self.call(
            "POST",
            self._q(vhost, queue) + "/get",
            {"count": count, "ackmode": mode, "encoding": "base64"},
        )
        if not isinstance(result, list):
            raise TypeError(f"expected a list of messages, got {type(result).__name__}")
        return result

    def queue(self, vhost: str, queue: str) -> dict[str, Any]:
        result = self.call("GET", self._q(vhost, queue))
        if not isinstance(result, dict):
            raise TypeError(f"expected a queue object, got {type(result).__name__}")
        return result

    def purge(self, vhost: str, queue: str) -> None:
        self.call("DELETE", self._q(vhost, queue) + "/contents")
