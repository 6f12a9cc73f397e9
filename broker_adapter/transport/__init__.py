"""The I/O shell: the only part of ``broker_adapter`` that imports aio-pika or opens sockets."""

from broker_adapter.transport.connection import amqp_url, connect
from broker_adapter.transport.consumer import Consumer
from broker_adapter.transport.delivery import Delivery
from broker_adapter.transport.publisher import OutgoingMessage, Publisher
from broker_adapter.transport.settings import BrokerSettings
from broker_adapter.transport.tls import client_ssl_context

__all__ = [
    "BrokerSettings",
    "Consumer",
    "Delivery",
    "OutgoingMessage",
    "Publisher",
    "amqp_url",
    "client_ssl_context",
    "connect",
]
