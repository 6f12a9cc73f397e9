"""A minimal Ua* stand-in: how a UE hands its A-KID to this AF (JSON lines over local TCP).

The real Ua* protocol (e.g. TLS with a pre-shared K_AF, TS 33.222) is outside this project. This
server lets a UE simulator drive the AF: the UE sends ``{"a_kid": ..., "challenge": hex}`` and
the AF answers with ``HMAC-SHA-256(K_AF, "akma-ua-proof" || challenge)``, which proves that both
hold the same K_AF without sending it. Only in demo mode does the answer also reveal K_AF.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

from as_side.client import AkmaKeyClient
from as_side.errors import AsSideError

log = logging.getLogger("as_side.ua")

PROOF_LABEL = b"akma-ua-proof"
_MAX_LINE = 4096


def key_proof(k_af: bytes, challenge: bytes) -> bytes:
    return hmac.new(k_af, PROOF_LABEL + challenge, hashlib.sha256).digest()


class UaServer:
    def __init__(
        self, client: AkmaKeyClient, *, host: str = "127.0.0.1", port: int = 0,
        reveal_keys: bool = False,
    ) -> None:
        self._client = client
        self._host = host
        self._port = port
        self._reveal = reveal_keys
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the Ua server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self._reveal:
            log.warning(
                "demo mode: the Ua endpoint reveals K_AF to its callers; never in production"
            )
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=_MAX_LINE
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = await self._answer(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            a_kid = str(request["a_kid"])
            challenge = bytes.fromhex(str(request["challenge"]))
            anonymous = bool(request.get("anonymous", False))
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "bad_request"}
        try:
            key = await self._client.get_application_key(a_kid, anonymous=anonymous)
        except AsSideError as exc:
            return {"ok": False, "error": exc.code, "detail": exc.detail}
        answer: dict[str, Any] = {
            "ok": True,
            "proof": key_proof(key.k_af, challenge).hex(),
            "expiry_ms": key.expiry_ms,
            "supi": key.supi,
            "gpsi": key.gpsi,
        }
        if self._reveal:
            answer["k_af"] = key.k_af.hex()
        return answer


async def ua_request(host: str, port: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Client side of the stand-in protocol (used by the UE simulator in the demo and tests)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(json.dumps(payload).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
        result: dict[str, Any] = json.loads(line)
        return result
    finally:
        writer.close()
