"""Names of this deployment's broker objects (docs/architecture.md).

``broker_adapter`` is generic messaging and takes these as parameters; the sides, the broker
definitions (``infra.definitions``) and the tools pass these constants, so a name lives once.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "NETWORK_IDENTITY",
    "NETWORK_REQUEST_QUEUE",
    "NETWORK_ROUTING_KEY",
    "REPLY_EXCHANGE",
    "REQUEST_EXCHANGE",
    "af_queue_prefix",
    "inbox_queue",
    "request_queue",
]

#: The network's party name (broker user and envelope identity) unless a deployment renames it.
NETWORK_IDENTITY: Final = "network"

#: AFs (and the AUSF) publish requests here (direct), routed by the network's identity.
REQUEST_EXCHANGE: Final = "akma.requests"
#: The network publishes answers and notifications here (direct), routed by the AF's identity.
REPLY_EXCHANGE: Final = "akma.replies"
#: Dead letters (fanout), from the broker's delivery limit or republished by a consumer.
DEAD_LETTER_EXCHANGE: Final = "akma.dlx"
#: The one queue on the dead-letter exchange, read by operators.
DEAD_LETTER_QUEUE: Final = "akma.dead-letters"

#: The routing key of requests to the network: its identity, as the broker binding uses.
NETWORK_ROUTING_KEY: Final = NETWORK_IDENTITY


def request_queue(network: str = NETWORK_IDENTITY) -> str:
    """The network's request queue, bound to ``REQUEST_EXCHANGE`` with the network's identity."""
    return f"{network}.requests"


#: The network's request queue under the default identity.
NETWORK_REQUEST_QUEUE: Final = request_queue(NETWORK_IDENTITY)


def af_queue_prefix(identity: str) -> str:
    """Every queue an AF may create or read starts with this (e.g. ``af.af1.example.com.``)."""
    return f"af.{identity}."


def inbox_queue(identity: str) -> str:
    """A party's own queue for answers and notifications, bound to ``REPLY_EXCHANGE``."""
    return f"{af_queue_prefix(identity)}inbox"
