"""Dependencies point one way: the AF side needs the contract and broker_adapter, never the
network side, and the contract's errors keep their wire codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from akma_contract import errors
from akma_contract.errors import (
    REJECT_REASONS,
    ContractError,
    InvalidAfIdError,
    InvalidBodyError,
    InvalidRequestError,
    UnknownMessageTypeError,
)
from akma_contract.identifiers import UA_TLS13_SHARED_KEY, make_af_id, parse_af_id
from akma_contract.messages import Rejected
from akma_contract.topology import (
    NETWORK_REQUEST_QUEUE,
    NETWORK_ROUTING_KEY,
    inbox_queue,
    request_queue,
)

# A meta path hook that refuses every network_side module, then the whole AF worker is imported.
_BLOCKED_IMPORT = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "network_side" or name.startswith("network_side."):
            raise ImportError(f"{name} is blocked")
        return None

sys.meta_path.insert(0, Block())
import as_side.__main__, as_side.client, as_side.service, as_side.settings, as_side.ua_server
assert not any(m.split(".")[0] == "network_side" for m in sys.modules)
try:
    import network_side.messages
except ImportError:
    print("blocked")
"""


def test_as_side_imports_without_network_side() -> None:
    out = subprocess.run(  # noqa: S603 - argv is sys.executable with fixed arguments
        [sys.executable, "-c", _BLOCKED_IMPORT], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "blocked"


def test_every_contract_error_has_its_own_stable_code() -> None:
    classes = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, ContractError)
    ]
    codes = {c.code for c in classes}
    assert len(codes) == len(classes)
    assert {
        "contract_error", "invalid_request", "invalid_body", "unknown_message_type",
        "invalid_identifier", "invalid_supi", "invalid_akid", "invalid_af_id", "invalid_key",
    } == codes
    assert issubclass(InvalidBodyError, InvalidRequestError)
    assert issubclass(UnknownMessageTypeError, InvalidRequestError)


def test_reject_reasons_are_what_a_rejected_answer_carries() -> None:
    for reason in REJECT_REASONS:
        body = Rejected.model_validate({"reason": reason}).to_body()
        assert Rejected.from_body(body).reason == reason
    assert InvalidRequestError.code in REJECT_REASONS


def test_af_id_round_trip_and_refusal() -> None:
    af_id = make_af_id("af1.example.com", UA_TLS13_SHARED_KEY)
    assert parse_af_id(af_id) == ("af1.example.com", UA_TLS13_SHARED_KEY)
    with pytest.raises(InvalidAfIdError):
        make_af_id("AF1.example.com", UA_TLS13_SHARED_KEY)


def test_broker_names() -> None:
    assert inbox_queue("af1.example.com") == "af.af1.example.com.inbox"
    assert NETWORK_REQUEST_QUEUE == request_queue() == "network.requests"
    assert NETWORK_ROUTING_KEY == "network"
