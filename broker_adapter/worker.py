"""Process plumbing shared by the workers: JSON logs, a metrics endpoint, SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

from prometheus_client import start_http_server

from broker_adapter.errors import BrokerConfigError

# Which event loop a worker process runs on. "auto": uvloop where it is installed (it is a
# dependency on Linux and macOS), asyncio's own loop otherwise.
EventLoopChoice = Literal["auto", "asyncio", "uvloop"]

# Attributes every LogRecord has; anything else was passed in ``extra`` and is emitted as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_SCALARS = (str, int, float, bool, type(None))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so operators can ship logs without parsing prose."""

    def format(self, record: logging.LogRecord) -> str:
        audit = getattr(record, "audit", None)
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            # Audit records (logger ``akma.audit``) carry their fields as a dict of scalars:
            # nest it rather than repeat it as a quoted JSON string in ``msg`` (whose text is
            # then never built at all).
            "msg": "audit" if isinstance(audit, dict) else record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "audit":
                entry[key] = value if isinstance(value, _SCALARS) else repr(value)
        if isinstance(audit, dict):
            entry["audit"] = {k: v for k, v in audit.items() if isinstance(v, _SCALARS)}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiormq logs every reconnect attempt at length; its warnings are enough for operators.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)


def start_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Expose Prometheus metrics over HTTP (``port`` None or 0 disables it)."""
    if port:
        start_http_server(port, addr=host)
        logging.getLogger("worker").info("metrics on http://%s:%d/metrics", host, port)


async def run_until_signalled(
    start: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
) -> None:
    """Run ``start`` (which returns a ``stop`` coroutine function) until SIGTERM or SIGINT,
    then call ``stop`` so in-flight messages finish before the process exits."""
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    stop = await start()
    logging.getLogger("worker").info("ready")
    await stop_event.wait()
    logging.getLogger("worker").info("draining")
    await stop()
    logging.getLogger("worker").info("stopped")


def run_worker(main: Coroutine[Any, Any, None], event_loop: EventLoopChoice = "auto") -> None:
    """Run a worker's main coroutine to the end on the chosen event loop (uvloop's gain:
    docs/benchmarks.md, "Workers on uvloop")."""
    if event_loop != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional (not on Windows)
        except ImportError:
            if event_loop == "uvloop":
                main.close()
                raise BrokerConfigError("event_loop=uvloop, but uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
