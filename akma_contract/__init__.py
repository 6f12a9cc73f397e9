"""The AKMA contract both sides share on the wire: message models and their codec
(``messages``), wire identifiers (``identifiers``), the errors a decode can raise and the reasons
a refusal can carry (``errors``), and the broker objects of this deployment (``topology``).

It depends on pydantic, msgpack and the standard library only, never on ``network_side``,
``as_side`` or ``broker_adapter``, so an AF installation does not pull in the network side.
"""
