"""The I/O shell: connection, consumer, publisher; the rest of ``broker_adapter`` uses aio-pika
only for its connection type."""

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
