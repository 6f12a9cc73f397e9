"""The I/O shell: the only part of ``broker_adapter`` that imports aio-pika or opens sockets."""

from broker_adapter.transport.connection import amqp_url, connect
from broker_adapter.transport.consumer import DEAD_LETTER_EXCHANGE, Consumer
from broker_adapter.transport.delivery import Ack, DeadLetter, Delivery, Outcome, Requeue
from broker_adapter.transport.publisher import OutgoingMessage, Publisher
from broker_adapter.transport.rpc import RpcClient
from broker_adapter.transport.settings import BrokerSettings
from broker_adapter.transport.tls import client_ssl_context

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "Ack",
    "BrokerSettings",
    "Consumer",
    "DeadLetter",
    "Delivery",
    "Outcome",
    "OutgoingMessage",
    "Publisher",
    "Requeue",
    "RpcClient",
    "amqp_url",
    "client_ssl_context",
    "connect",
]
