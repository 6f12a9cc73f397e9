"""Micro-benchmark: envelope seal+open per suite against a nested JWS-in-JWE (joserfc).

Run from the repository root:  .venv/bin/python -m bench.envelope_bench [--number N]

Every suite is measured, per-message HPKE and epoch variants (``*-E``) alike, in the same run
as JOSE, alternating round by round; each figure is the median of the rounds.

Not a timed test: it prints a markdown table and writes bench/results/envelope.json. Both
paths carry the same claims (sender, recipient, message id, timestamp, correlation id, type
and a 200-byte body). The envelope side includes everything ``open_envelope`` does (strict
parsing, trust-store lookup with its cached verdict, all identity and time checks); the JOSE
side only signs/encrypts and decrypts/verifies, with no certificate or claim checks, so the
comparison flatters JOSE, not us.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519
from joserfc import jwe, jws
from joserfc.jwk import OKPKey

from broker_adapter.envelope import EnvelopePolicy, open_envelope, seal
from broker_adapter.epoch import (
    DEFAULT_MAX_AGE_MS,
    DEFAULT_MAX_MESSAGES,
    EpochKeyCache,
    SenderEpochs,
)
from broker_adapter.identity import LocalIdentity
from broker_adapter.suites import DEFAULT_SUITE_NAME, SUITES
from broker_adapter.trust import TrustMaterial, TrustStore
from infra import pki

RESULTS = Path(__file__).with_name("results") / "envelope.json"
BODY = os.urandom(200)
CORRELATION = os.urandom(16)


# CPU time of this process by default: on a shared machine, wall time also counts the time other
# processes held the CPU, which says nothing about either path. ``--wall`` switches to wall time.
@dataclass
class _Timer:
    clock: Callable[[], float] = time.process_time


_TIMER = _Timer()
# The default suite must cost at most this fraction of the JOSE path (the envelope CPU target).
_TARGET_RATIO_TO_JOSE = 0.5
_MIN_REPEAT = 3


def _run(fn: Callable[[], object], number: int) -> float:
    """Mean microseconds per call over ``number`` calls."""
    clock = _TIMER.clock
    start = clock()
    for _ in range(number):
        fn()
    return (clock() - start) / number * 1e6


class BenchPath:
    """One benchmarked path: a seal and an open callable plus the size of a sample."""

    def __init__(self, seal: Callable[[], object], open_: Callable[[], object], size: int) -> None:
        self.seal, self.open, self.size = seal, open_, size
        self.seal_runs: list[float] = []
        self.open_runs: list[float] = []
        seal()  # warm caches (trust verdicts, epoch state, the receiver's epoch-key cache)
        open_()

    def run(self, number: int) -> None:
        self.seal_runs.append(_run(self.seal, number))
        self.open_runs.append(_run(self.open, number))

    def result(self) -> dict[str, float]:
        seal_us = statistics.median(self.seal_runs)
        open_us = statistics.median(self.open_runs)
        return {
            "seal_us": seal_us,
            "open_us": open_us,
            "total_us": seal_us + open_us,
            "size_bytes": self.size,
            "runs": len(self.seal_runs),
        }


def _world() -> dict[str, Any]:
    now = datetime.now(UTC)
    ca_cert, ca_key = pki.create_ca("Bench CA", now=now - timedelta(days=1))

    def issue(name: str, purpose: pki.Purpose, public_key: Any, **kw: Any) -> Any:
        return pki.issue_cert(
            ca_cert, ca_key, identity=name, purpose=purpose, public_key=public_key, now=now, **kw
        )

    p256 = ec.generate_private_key(ec.SECP256R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    sender_p256 = issue("af1.example.com", "sign", p256.public_key())
    sender_ed = issue("af1.example.com", "sign", ed.public_key())
    x = x25519.X25519PrivateKey.generate()
    enc = issue("network", "enc", x.public_key())
    m, xq = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    enc_pq = issue(
        "network", "enc-pq", xq.public_key(), mlkem_public_bytes=m.public_key().public_bytes_raw()
    )
    net_sign = ec.generate_private_key(ec.SECP256R1())
    net_sign_cert = issue("network", "sign", net_sign.public_key())
    trust = TrustStore.from_material(
        TrustMaterial(
            anchors=(ca_cert,),
            crls=(pki.build_crl(ca_cert, ca_key, [], now=now),),
            certificates=(sender_p256, sender_ed, enc, enc_pq, net_sign_cert),
        )
    )
    network = LocalIdentity.from_certificates(
        "network",
        signing_key=net_sign,
        signing_cert=net_sign_cert,
        decryption_keys=[(enc, x), (enc_pq, hpke.MLKEM768X25519PrivateKey(m, xq))],
    )
    senders = {
        "p256": LocalIdentity.from_certificates(
            "af1.example.com", signing_key=p256, signing_cert=sender_p256, decryption_keys=[]
        ),
        "ed25519": LocalIdentity.from_certificates(
            "af1.example.com", signing_key=ed, signing_cert=sender_ed, decryption_keys=[]
        ),
    }
    return {"trust": trust, "network": network, "senders": senders}


def bench_suite(world: dict[str, Any], suite_name: str) -> BenchPath:
    """Steady state of one suite: a sender with its epoch state, a receiver with its cache.

    Epoch suites run with the default limits (10,000 messages / 300 s per epoch), so the one
    HPKE wrap and the one HPKE unwrap per epoch are part of the measurement, spread over the
    epoch as in production. The receiver opens a rotating pool of distinct messages.
    """
    suite = SUITES[suite_name]
    sender = world["senders"]["ed25519" if suite.signature.value == "ed25519" else "p256"]
    recipient = world["trust"].encryption_key_for("network", suite, int(time.time() * 1000))
    policy = EnvelopePolicy(allowed_suites=frozenset(SUITES))
    epochs = SenderEpochs()
    cache = EpochKeyCache()

    def clock() -> int:
        return int(time.time() * 1000)

    def do_seal() -> bytes:
        return seal(
            suite=suite,
            identity=sender,
            recipient=recipient,
            msg_type="akma.bench",
            body=BODY,
            correlation_id=CORRELATION,
            clock=clock,
            rng=os.urandom,
            epochs=epochs,
        )

    pool = [do_seal() for _ in range(64)]
    index = [0]

    def do_open() -> object:
        index[0] = (index[0] + 1) % len(pool)
        return open_envelope(
            pool[index[0]],
            me=world["network"],
            trust=world["trust"],
            now_ms=clock(),
            policy=policy,
            broker_user_id="af1.example.com",
            epoch_cache=cache,
        )

    return BenchPath(do_seal, do_open, len(pool[0]))


def bench_jose() -> BenchPath:
    sign_key = OKPKey.generate_key("Ed25519")
    enc_key = OKPKey.generate_key("X25519")
    sig_algs, enc_algs = ["Ed25519"], ["ECDH-ES", "A256GCM"]

    def claims() -> bytes:
        return json.dumps(
            {
                "iss": "af1.example.com",
                "aud": "network",
                "jti": os.urandom(16).hex(),
                "iat": int(time.time() * 1000),
                "typ": "akma.bench",
                "cid": CORRELATION.hex(),
                "body": base64.urlsafe_b64encode(BODY).decode(),
            },
            separators=(",", ":"),
        ).encode()

    def do_seal() -> str:
        signed = jws.serialize_compact({"alg": "Ed25519"}, claims(), sign_key, algorithms=sig_algs)
        return jwe.encrypt_compact(
            {"alg": "ECDH-ES", "enc": "A256GCM", "cty": "JWT"}, signed, enc_key, algorithms=enc_algs
        )

    sample = do_seal()

    def do_open() -> object:
        inner = jwe.decrypt_compact(sample, enc_key, algorithms=enc_algs).plaintext
        if inner is None:
            raise ValueError("the JWE decrypted to no plaintext")
        return json.loads(jws.deserialize_compact(inner, sign_key, algorithms=sig_algs).payload)

    return BenchPath(do_seal, do_open, len(sample))


def bench_signatures(number: int) -> dict[str, float]:
    """Raw sign/verify cost of the two signature algorithms, for the default-suite choice."""
    data = os.urandom(300)
    p256 = ec.generate_private_key(ec.SECP256R1())
    ecdsa = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    p256_sig = p256.sign(data, ecdsa)
    p256_pub = p256.public_key()
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_sig = ed.sign(data)
    ed_pub = ed.public_key()
    out: dict[str, list[float]] = {
        k: [] for k in ("p256_sign", "p256_verify", "ed_sign", "ed_verify")
    }
    for _ in range(3):
        out["p256_sign"].append(_run(lambda: p256.sign(data, ecdsa), number))
        out["ed_sign"].append(_run(lambda: ed.sign(data), number))
        out["p256_verify"].append(_run(lambda: p256_pub.verify(p256_sig, data, ecdsa), number))
        out["ed_verify"].append(_run(lambda: ed_pub.verify(ed_sig, data), number))
    return {f"{k}_us": statistics.median(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=400, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=5, help="alternating rounds (median, >= 3)")
    parser.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    args = parser.parse_args(argv)
    if args.repeat < _MIN_REPEAT:
        parser.error(f"--repeat must be at least {_MIN_REPEAT}")
    if args.wall:
        _TIMER.clock = time.perf_counter

    world = _world()
    jose_name = "JOSE JWS(Ed25519) in JWE(ECDH-ES X25519, A256GCM), joserfc"
    names = [DEFAULT_SUITE_NAME, *sorted(set(SUITES) - {DEFAULT_SUITE_NAME})]
    paths: dict[str, BenchPath] = {name: bench_suite(world, name) for name in names}
    paths[jose_name] = bench_jose()
    # Alternate: every round runs every path once, starting at a different path each time,
    # so that background load on a shared machine hits all paths alike. Medians per path.
    order = list(paths)
    for round_ in range(args.repeat):
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            paths[name].run(args.number)
    rows = {name: path.result() for name, path in paths.items()}
    jose_total = rows[jose_name]["total_us"]
    for row in rows.values():
        row["ratio_to_jose"] = row["total_us"] / jose_total

    print("| path | seal us | open us | seal+open us | bytes | ratio to JOSE |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['seal_us']:.0f} | {row['open_us']:.0f} | {row['total_us']:.0f} "
            f"| {row['size_bytes']:.0f} | {row['ratio_to_jose']:.2f} |"
        )
    default_ratio = rows[DEFAULT_SUITE_NAME]["ratio_to_jose"]
    verdict = "meets" if default_ratio <= _TARGET_RATIO_TO_JOSE else "MISSES"
    print(f"\ndefault suite {DEFAULT_SUITE_NAME} / JOSE = {default_ratio:.2f} "
          f"({verdict} <= {_TARGET_RATIO_TO_JOSE:g})")
    signatures = bench_signatures(args.number)
    print(
        "signatures (us): P-256 sign {p256_sign_us:.0f} verify {p256_verify_us:.0f}; "
        "Ed25519 sign {ed_sign_us:.0f} verify {ed_verify_us:.0f}".format(**signatures)
    )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "python": sys.version.split()[0],
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "cryptography": cryptography.__version__,
                },
                "body_bytes": len(BODY),
                "number": args.number,
                "repeat": args.repeat,
                "clock": "wall (perf_counter)" if args.wall else "process CPU time (process_time)",
                "statistic": (
                    "median over repeat alternating rounds of the mean us per call; every round "
                    "runs every path (all suites and JOSE) once, in rotating order"
                ),
                "epoch_limits": {
                    "max_messages": DEFAULT_MAX_MESSAGES,
                    "max_age_ms": DEFAULT_MAX_AGE_MS,
                },
                "results": rows,
                "signatures_us": signatures,
                "default_ratio_to_jose": default_ratio,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
