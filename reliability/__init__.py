"""Reliability and attack scenarios (issue 5): each runs against real brokers and real workers,
at a small scale inside ``make test`` and at full scale in ``make soak``."""
