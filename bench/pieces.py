"""Part 6: the secured path's pieces in one process, without a broker (us of CPU per message).

What one receiving worker pays per request for the security, piece by piece: open (checks 1-7),
the replay claim and completion on a real SQLite store (``per_turn`` messages per store call, as
a busy consumer's batch groups them), and sealing the answer. Set against the end-to-end CPU
difference measured over the broker, it tells how much of that difference is these pieces and
how much is per-message event-loop and I/O work that grows when the rate drops.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import envelope_bench as eb
from broker_adapter.clock import system_clock_ms
from broker_adapter.codec import EnvelopeCodec
from broker_adapter.envelope import EnvelopePolicy
from broker_adapter.replay import Claim, ClaimRequest, ReplayGuard
from broker_adapter.replay_stores import SqliteReplayStore
from broker_adapter.suites import DEFAULT_SUITE_NAME

BODY_BYTES = 120  # about an AKMA key request or answer body


def _measure(count: int, per_turn: int) -> dict[str, float]:
    world = eb._world()
    policy = EnvelopePolicy(allowed_suites=frozenset({DEFAULT_SUITE_NAME}))
    sender = EnvelopeCodec(identity=world["senders"]["p256"], trust=world["trust"],
                           policy=policy, clock=system_clock_ms, rng=os.urandom)
    receiver = EnvelopeCodec(identity=world["network"], trust=world["trust"], policy=policy,
                             clock=system_clock_ms, rng=os.urandom)
    body = os.urandom(BODY_BYTES)

    def seal() -> bytes:
        return sender.encode(recipient="network", msg_type="akma.bench", body=body).data

    seal()  # warm: epoch key, trust verdicts
    receiver.decode(seal(), broker_user_id="af1.example.com")
    cpu = time.process_time
    t0 = cpu()
    sealed = [seal() for _ in range(count)]
    t_seal = cpu() - t0
    t0 = cpu()
    opened = [receiver.decode(d, broker_user_id="af1.example.com") for d in sealed]
    t_open = cpu() - t0
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteReplayStore(Path(tmp) / "replay.sqlite3")
        guard = ReplayGuard(store, window_ms=policy.window_ms, skew_ms=policy.skew_ms,
                            in_progress_lease_ms=5_000, clock=system_clock_ms)
        try:
            t0 = cpu()
            claims: list[Claim] = []
            for i in range(0, count, per_turn):
                for claim in guard.claim([
                        ClaimRequest(o.sender, o.msg_id, o.digest, o.timestamp_ms)
                        for o in opened[i:i + per_turn]]):
                    if isinstance(claim, Exception):
                        raise claim
                    claims.append(claim)
            t_claim = cpu() - t0
            t0 = cpu()
            for i in range(0, count, per_turn):
                # The answer's sealed bytes are cached with the entry, as the responder does.
                guard.complete(list(zip(claims[i:i + per_turn], sealed[i:i + per_turn],
                                        strict=True)))
            t_complete = cpu() - t0
        finally:
            store.close()
    us = 1e6 / count
    pieces = {"seal": t_seal * us, "open": t_open * us, "claim": t_claim * us,
              "complete": t_complete * us}
    pieces["total"] = sum(pieces.values())
    return pieces


def run_pieces(count: int, rounds: int, per_turn: int = 8) -> dict[str, Any]:
    runs = [_measure(count, per_turn) for _ in range(rounds)]
    medians = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
    return {"count": count, "rounds": rounds, "per_turn": per_turn, "body_bytes": BODY_BYTES,
            "suite": DEFAULT_SUITE_NAME, "us_per_message": medians}
