"""Generic secure messaging over RabbitMQ: envelope, identities, replay guard, AMQP transport.

Nothing in this package knows about AKMA. Pure modules (codec, envelope, suites, trust,
replay) never import the transport shell (``broker_adapter.transport``).
"""
