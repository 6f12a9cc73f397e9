"""UE (and AUSF) simulator for the demo and tests: derives K_AKMA, A-TID, A-KID and K_AF from
K_AUSF and the SUPI exactly as TS 33.535 says both the UE and the AUSF do. Pure.

The network never calls this: the AAnF only stores what the AUSF registers and derives K_AF. A
K_AF the simulator derives and the K_AF the network sends therefore agree only if both sides
implement the derivation and the A-KID format identically, which is what the demo shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from akma_contract.messages import AkmaKeyInfo
from network_side.akid import format_akid
from network_side.akma import derive_a_tid, derive_k_af, derive_k_akma, make_af_id

__all__ = ["UeSimulator"]


@dataclass(frozen=True)
class UeSimulator:
    """One subscriber after primary authentication. ``supi`` is the typed form (``imsi-...``)."""

    supi: str
    k_ausf: bytes = field(repr=False)
    realm: str
    rid: str = "0"
    gpsi: str | None = None
    k_akma: bytes = field(init=False, repr=False)
    a_tid: bytes = field(init=False)
    a_kid: str = field(init=False)

    def __post_init__(self) -> None:
        # Derived once at construction: every invalid input (key length, SUPI, RID, realm) fails
        # here, not halfway through a demo.
        object.__setattr__(self, "k_akma", derive_k_akma(self.k_ausf, self.supi))
        object.__setattr__(self, "a_tid", derive_a_tid(self.k_ausf, self.supi))
        object.__setattr__(self, "a_kid", format_akid(self.rid, self.a_tid, self.realm))

    def k_af(self, af_fqdn: str, ua_protocol_id: bytes) -> bytes:
        """The K_AF this UE would use with the AF at ``af_fqdn`` over that Ua* protocol."""
        return derive_k_af(self.k_akma, make_af_id(af_fqdn, ua_protocol_id))

    def anchor_key_info(self) -> AkmaKeyInfo:
        """What the AUSF registers at the AAnF for this UE (Naanf_AKMA_AnchorKey_Register)."""
        return AkmaKeyInfo(supi=self.supi, gpsi=self.gpsi, a_kid=self.a_kid, k_akma=self.k_akma)
