"""RabbitMQ definitions (vhost, users, permissions, topology, policy) for one deployment.

The broker loads this file at boot (``load_definitions``), so clients never declare the shared
topology themselves: they only declare queues passively, and the permissions below stop them from
creating or binding anything outside their own name prefix. The names are the
contract's (``akma_contract.topology``); this module is the single place that turns them into
broker objects.

Pure apart from ``write_definitions`` and the command line: the admin password's salt is passed in
(``salt``) or drawn from ``secrets`` by the caller-facing helpers.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from akma_contract.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    REPLY_EXCHANGE,
    REQUEST_EXCHANGE,
    af_queue_prefix,
    inbox_queue,
    request_queue,
)
from infra.errors import PkiError
from infra.pki import DEFAULT_NETWORK, PkiLayout, validate_identity

VHOST = "akma"
POLICY_NAME = "akma-queues"
DELIVERY_LIMIT = 5
ADMIN_USER = "admin"
PASSWORD_HASHING = "rabbit_password_hashing_sha256"  # noqa: S105 - a module name, not a secret

JsonDict = dict[str, Any]


_SALT_BYTES = 4


def rabbit_password_hash(password: str, salt: bytes) -> str:
    """Hash ``password`` the way ``rabbit_password_hashing_sha256`` stores it.

    RabbitMQ keeps base64(salt || SHA-256(salt || UTF-8 password)) with a 4-byte salt; computing it
    here lets the admin password live only in the PKI directory, never in the definitions file.
    """
    if len(salt) != _SALT_BYTES:
        raise PkiError("RabbitMQ password salts are 4 bytes")
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def _user(name: str, *, password_hash: str = "", tags: Sequence[str] = ()) -> JsonDict:
    # An empty password_hash makes password login impossible; the party can then only log in
    # with its client certificate (EXTERNAL).
    return {
        "name": name,
        "password_hash": password_hash,
        "hashing_algorithm": PASSWORD_HASHING,
        "tags": list(tags),
        "limits": {},
    }


def _permission(user: str, configure: str, write: str, read: str) -> JsonDict:
    return {"user": user, "vhost": VHOST, "configure": configure, "write": write, "read": read}


def _exchange(name: str, kind: str) -> JsonDict:
    return {
        "name": name,
        "vhost": VHOST,
        "type": kind,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }


def _queue(name: str) -> JsonDict:
    return {
        "name": name,
        "vhost": VHOST,
        "durable": True,
        "auto_delete": False,
        "arguments": {"x-queue-type": "quorum"},
    }


def _binding(source: str, queue: str, key: str) -> JsonDict:
    return {
        "source": source,
        "vhost": VHOST,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": key,
        "arguments": {},
    }


def build_definitions(
    *, network: str, afs: Sequence[str], admin_password: str, salt: bytes
) -> JsonDict:
    """Return the definitions document for ``network`` and ``afs`` (pure)."""
    validate_identity(network)
    for af in afs:
        validate_identity(af)
    if not admin_password:
        raise PkiError("the admin password must not be empty")
    afs = list(dict.fromkeys(afs))
    net_q = request_queue(network)

    users = [_user(network)] + [_user(af) for af in afs]
    users.append(
        _user(
            ADMIN_USER,
            password_hash=rabbit_password_hash(admin_password, salt),
            tags=["administrator"],
        )
    )

    # Writes are checked against the exchange, reads against the queue, configure against
    # whatever is declared or deleted. The network may not create anything; an AF may create
    # queues (and nothing else) under its own prefix, for example a private reply queue.
    dlx = re.escape(DEAD_LETTER_EXCHANGE)
    permissions = [
        _permission(
            network, "^$", f"^({re.escape(REPLY_EXCHANGE)}|{dlx})$", f"^{re.escape(net_q)}$"
        ),
        *(
            _permission(
                af,
                f"^{re.escape(af_queue_prefix(af))}",
                f"^({re.escape(REQUEST_EXCHANGE)}|{dlx})$",
                f"^{re.escape(af_queue_prefix(af))}",
            )
            for af in afs
        ),
        # Operators read dead letters and inspect queues in the management UI.
        _permission(ADMIN_USER, ".*", ".*", ".*"),
    ]

    queues = [_queue(net_q), *(_queue(inbox_queue(af)) for af in afs), _queue(DEAD_LETTER_QUEUE)]
    bindings = [
        _binding(REQUEST_EXCHANGE, net_q, network),
        *(_binding(REPLY_EXCHANGE, inbox_queue(af), af) for af in afs),
        _binding(DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, ""),
    ]
    policy = {
        "vhost": VHOST,
        "name": POLICY_NAME,
        # The dead-letter queue itself is deliberately outside the pattern, so a dead letter
        # can never be dead-lettered again in a loop.
        "pattern": f"^({re.escape(network)}|af)\\.",
        "apply-to": "queues",
        "priority": 0,
        "definition": {
            "delivery-limit": DELIVERY_LIMIT,
            "dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        },
    }
    return {
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [policy],
        "exchanges": [
            _exchange(REQUEST_EXCHANGE, "direct"),
            _exchange(REPLY_EXCHANGE, "direct"),
            _exchange(DEAD_LETTER_EXCHANGE, "fanout"),
        ],
        "queues": queues,
        "bindings": bindings,
    }


def write_definitions(path: Path, layout: PkiLayout, afs: Sequence[str] | None = None) -> Path:
    """Write definitions.json for the PKI's parties (or ``afs``), readable by the owner only.

    The file holds the admin password hash, so it is kept private like the keys.
    """
    doc = build_definitions(
        network=layout.network,
        afs=layout.afs if afs is None else afs,
        admin_password=layout.admin_password(),
        salt=secrets.token_bytes(4),
    )
    data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.definitions", description="Write RabbitMQ definitions.json."
    )
    parser.add_argument("--pki", required=True, type=Path, help="PKI directory")
    parser.add_argument("--out", required=True, type=Path, help="output file")
    parser.add_argument("--network", default=DEFAULT_NETWORK)
    parser.add_argument("--af", action="append", default=None, help="AF FQDN (default: all)")
    args = parser.parse_args(argv)
    layout = PkiLayout.from_dir(args.pki, network=args.network)
    write_definitions(args.out, layout, args.af)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
