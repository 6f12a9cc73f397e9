"""AF registry: which authenticated identity may ask for which AF_IDs, and under what policy.

Loaded from a TOML file (format in docs/akma.md, example in infra/af-registry.example.toml).
Parsing is pure (:meth:`AfRegistry.from_mapping`, :meth:`AfRegistry.from_toml`); only
:meth:`AfRegistry.load` reads a file. Every mistake in the file is a ``ConfigError`` at load time,
so a typo cannot quietly widen or narrow what an AF may do at run time.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from akma_contract.errors import InvalidAfIdError
from network_side.akma import make_af_id, validate_fqdn
from network_side.errors import ConfigError

__all__ = ["AfEntry", "AfKind", "AfRegistry"]


class AfKind(StrEnum):
    """Internal AFs sit in the operator's domain and may receive the SUPI; external AFs are
    reached through the NEF and only ever receive a GPSI (TS 33.535)."""

    INTERNAL = "internal"
    EXTERNAL = "external"


@dataclass(frozen=True)
class AfEntry:
    identity: str
    kind: AfKind
    af_ids: frozenset[bytes]
    rate_per_second: float
    burst: int


_TOP_KEYS = frozenset({"ausf_identities", "af"})
_AF_KEYS = frozenset({"identity", "kind", "rate_per_second", "burst", "af_ids"})
_AF_ID_KEYS = frozenset({"fqdn", "ua_protocol_id"})


def _require(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise ConfigError(f"AF registry {where}: {what}")


def _parse_entry(index: int, raw: Any) -> AfEntry:
    where = f"af[{index}]"
    _require(isinstance(raw, dict), where, "must be a table")
    unknown = set(raw) - _AF_KEYS
    _require(not unknown, where, f"unknown keys {sorted(unknown)}")
    identity = raw.get("identity")
    _require(isinstance(identity, str), where, "identity must be a string")
    try:
        validate_fqdn(identity)
    except InvalidAfIdError as exc:
        raise ConfigError(f"AF registry {where}: identity is not an FQDN ({exc.detail})") from None
    where = f"af {identity!r}"
    try:
        kind = AfKind(raw.get("kind"))
    except ValueError:
        raise ConfigError(f"AF registry {where}: kind must be 'internal' or 'external'") from None
    rate = raw.get("rate_per_second")
    _require(
        isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0,
        where,
        "rate_per_second must be a positive number",
    )
    burst = raw.get("burst")
    _require(
        isinstance(burst, int) and not isinstance(burst, bool) and burst >= 1,
        where,
        "burst must be an integer >= 1",
    )
    raw_ids = raw.get("af_ids")
    _require(
        isinstance(raw_ids, list) and len(raw_ids) > 0, where, "af_ids must be a non-empty list"
    )
    af_ids: set[bytes] = set()
    for item in raw_ids:
        _require(
            isinstance(item, dict) and set(item) == _AF_ID_KEYS,
            where,
            "each af_ids entry needs exactly fqdn and ua_protocol_id",
        )
        fqdn, ua_hex = item["fqdn"], item["ua_protocol_id"]
        _require(
            isinstance(fqdn, str) and isinstance(ua_hex, str),
            where,
            "af_ids values must be strings",
        )
        try:
            af_ids.add(make_af_id(fqdn, bytes.fromhex(ua_hex)))
        except (ValueError, InvalidAfIdError) as exc:
            raise ConfigError(
                f"AF registry {where}: bad AF_ID {fqdn!r}/{ua_hex!r}: {exc}"
            ) from None
    return AfEntry(identity, kind, frozenset(af_ids), float(rate), burst)


class AfRegistry:
    """The loaded registry: AFs by identity, each AF_ID's single owner, and the AUSF identities
    (the parties allowed to register anchor keys and remove contexts). Immutable once built."""

    def __init__(self, afs: Iterable[AfEntry], ausf_identities: Iterable[str] = ()) -> None:
        by_identity: dict[str, AfEntry] = {}
        owners: dict[bytes, str] = {}
        for entry in afs:
            _require(entry.identity not in by_identity, f"af {entry.identity!r}", "listed twice")
            by_identity[entry.identity] = entry
            for af_id in entry.af_ids:
                # One owner per AF_ID: K_AF is bound to the AF_ID, so two identities sharing one
                # would each be able to fetch the keys meant for the other.
                _require(
                    af_id not in owners,
                    f"af {entry.identity!r}",
                    f"AF_ID {af_id[:-5].decode()!r} already belongs to {owners.get(af_id)!r}",
                )
                owners[af_id] = entry.identity
        self.afs: Mapping[str, AfEntry] = MappingProxyType(by_identity)
        self.ausf_identities = frozenset(ausf_identities)
        self._owners: Mapping[bytes, str] = MappingProxyType(owners)
        overlap = self.ausf_identities & set(by_identity)
        _require(not overlap, "top level", f"identities both AF and AUSF: {sorted(overlap)}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AfRegistry:
        unknown = set(data) - _TOP_KEYS
        _require(not unknown, "top level", f"unknown keys {sorted(unknown)}")
        ausf = data.get("ausf_identities", [])
        _require(
            isinstance(ausf, list) and all(isinstance(a, str) and a for a in ausf),
            "top level",
            "ausf_identities must be a list of non-empty strings",
        )
        raw_afs = data.get("af", [])
        _require(isinstance(raw_afs, list), "top level", "af must be an array of tables ([[af]])")
        return cls((_parse_entry(i, raw) for i, raw in enumerate(raw_afs)), ausf)

    @classmethod
    def from_toml(cls, text: str) -> AfRegistry:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"AF registry is not valid TOML: {exc}") from None
        return cls.from_mapping(data)

    @classmethod
    def load(cls, path: str | Path) -> AfRegistry:
        """Read and parse a registry file (the only function here that does I/O)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read AF registry {path}: {exc.strerror}") from None
        return cls.from_toml(text)

    def get(self, identity: str) -> AfEntry | None:
        return self.afs.get(identity)

    def owner_of(self, af_id: bytes) -> str | None:
        return self._owners.get(af_id)
