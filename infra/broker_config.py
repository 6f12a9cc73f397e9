"""Render the broker configuration for a local node or for a container, from one template.

Both the local launcher and the Docker paths (``infra/docker-compose.yml`` and the testcontainers
fixture) use ``infra/rabbitmq/rabbitmq.conf.template``, ``infra/rabbitmq/enabled_plugins`` and the
same generated definitions, so the security settings that the tests prove are the ones shipped.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from infra.definitions import write_definitions
from infra.pki import DEFAULT_NETWORK, PkiLayout

RABBITMQ_DIR = Path(__file__).resolve().parent / "rabbitmq"
CONF_TEMPLATE = RABBITMQ_DIR / "rabbitmq.conf.template"
ENABLED_PLUGINS = RABBITMQ_DIR / "enabled_plugins"

# Where the container expects things: the official image reads every *.conf in conf.d, and the
# other files sit beside it so that one bind mount carries config, definitions and certificates.
CONTAINER_CONF_DIR = "/etc/rabbitmq/conf.d"
CONTAINER_AMQPS_PORT = 5671
CONTAINER_MANAGEMENT_PORT = 15671
CONTAINER_PROMETHEUS_PORT = 15691
# Inside the container every interface is the container's own; the host maps the ports it wants.
CONTAINER_BIND_IP = "0.0.0.0"  # noqa: S104


@dataclass(frozen=True)
class ListenerSettings:
    """Addresses, ports and file paths that differ between a local node and a container."""

    amqp_ip: str
    amqp_port: int
    management_ip: str
    management_port: int
    prometheus_ip: str
    prometheus_port: int
    cacertfile: str
    certfile: str
    keyfile: str
    definitions: str
    log_console: bool = False


def render_conf(settings: ListenerSettings) -> str:
    """Fill the template (pure apart from reading the template file)."""
    template = Template(CONF_TEMPLATE.read_text(encoding="utf-8"))
    # IPv6 listeners need brackets in the "ip:port" form; loopback IPv4 is what we use.
    listener = (
        f"[{settings.amqp_ip}]:{settings.amqp_port}"
        if ":" in settings.amqp_ip
        else f"{settings.amqp_ip}:{settings.amqp_port}"
    )
    return template.substitute(
        amqp_listener=listener,
        cacertfile=settings.cacertfile,
        certfile=settings.certfile,
        keyfile=settings.keyfile,
        definitions=settings.definitions,
        management_ip=settings.management_ip,
        management_port=settings.management_port,
        prometheus_ip=settings.prometheus_ip,
        prometheus_port=settings.prometheus_port,
        log_console="true" if settings.log_console else "false",
    )


def stage_container_config(
    layout: PkiLayout, out_dir: Path, afs: Sequence[str] | None = None
) -> Path:
    """Write ``out_dir/conf.d`` (config, definitions, CA, server cert and key) and
    ``out_dir/enabled_plugins`` for the official ``rabbitmq`` image; return ``out_dir``.

    The image runs the broker as uid 999, which cannot read the PKI's 0600 keys owned by the
    host user. This staged copy is therefore made world-readable (0644 files, 0755 directories):
    acceptable for development and tests only. In production, mount the key owned by uid 999
    with mode 0600 instead (see docs/operations-broker.md).
    """
    conf_d = out_dir / "conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(0o755)
    conf_d.chmod(0o755)
    for src, name in (
        (layout.ca_cert, "ca.crt"),
        (layout.server_cert, "server.crt"),
        (layout.server_key, "server.key"),
    ):
        shutil.copyfile(src, conf_d / name)
        (conf_d / name).chmod(0o644)
    defs = write_definitions(conf_d / "definitions.json", layout, afs)
    defs.chmod(0o644)
    settings = ListenerSettings(
        amqp_ip=CONTAINER_BIND_IP,
        amqp_port=CONTAINER_AMQPS_PORT,
        management_ip=CONTAINER_BIND_IP,
        management_port=CONTAINER_MANAGEMENT_PORT,
        prometheus_ip=CONTAINER_BIND_IP,
        prometheus_port=CONTAINER_PROMETHEUS_PORT,
        cacertfile=f"{CONTAINER_CONF_DIR}/ca.crt",
        certfile=f"{CONTAINER_CONF_DIR}/server.crt",
        keyfile=f"{CONTAINER_CONF_DIR}/server.key",
        definitions=f"{CONTAINER_CONF_DIR}/definitions.json",
        log_console=True,
    )
    (conf_d / "20-akma.conf").write_text(render_conf(settings), encoding="utf-8")
    (conf_d / "20-akma.conf").chmod(0o644)
    shutil.copyfile(ENABLED_PLUGINS, out_dir / "enabled_plugins")
    (out_dir / "enabled_plugins").chmod(0o644)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.broker_config",
        description="Stage config, definitions and certificates for the rabbitmq container.",
    )
    parser.add_argument("--pki", required=True, type=Path, help="PKI directory")
    parser.add_argument("--out", required=True, type=Path, help="staging directory")
    parser.add_argument("--network", default=DEFAULT_NETWORK)
    parser.add_argument("--af", action="append", default=None, help="AF FQDN (default: all)")
    args = parser.parse_args(argv)
    layout = PkiLayout.from_dir(args.pki, network=args.network)
    out = stage_container_config(layout, args.out, args.af)
    print(f"staged broker config in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
