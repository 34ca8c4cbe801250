"""``aeterna certs``: a development CA, server and edge certificates, and SPKI pins.

    aeterna certs init-ca --dir certs
    aeterna certs server --dir certs --host central.example.com --host 10.0.0.5
    aeterna certs edge --dir certs --agent-id edge-eu-1 --tenant acme
    aeterna certs pin certs/server.crt

Each command prints the pins to paste into ``sync.network.pinnedCertificates``
(server) or ``tls.clientPins`` (edge). The CA key stays in ``--dir``: keep it
out of any image or repository.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aeterna_cli.output import add_json, print_json
from aeterna_security.certs import Issued, create_ca, create_client_cert, create_server_cert
from aeterna_security.pins import pins_of_pem_chain

CA_STEM = "ca"


def _load_ca(directory: Path) -> Issued:
    if not (directory / f"{CA_STEM}.crt").exists():
        raise SystemExit(f"no CA in {directory}; run 'aeterna certs init-ca --dir {directory}' first")
    return Issued.read(directory, CA_STEM)


def _init_ca(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if (directory / f"{CA_STEM}.crt").exists() and not args.force:
        print(f"{directory / 'ca.crt'} exists; pass --force to replace it", file=sys.stderr)
        return 1
    ca = create_ca(args.name)
    cert, key = ca.write(directory, CA_STEM)
    if args.json:
        print_json({"certificate": str(cert), "key": str(key), "pin": ca.pin})
        return 0
    print(f"CA certificate: {cert}\nCA key:         {key} (keep it secret)\npin: {ca.pin}")
    return 0


def _server(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    issued = create_server_cert(_load_ca(directory), args.host or ["localhost", "127.0.0.1"])
    cert, key = issued.write(directory, args.name)
    if args.json:
        print_json({"certificate": str(cert), "key": str(key), "pin": issued.pin})
        return 0
    print(f"server certificate: {cert}\nserver key:         {key}")
    print("sync.network.pinnedCertificates:")
    print(f'  - "{issued.pin}"')
    return 0


def _edge(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    issued = create_client_cert(_load_ca(directory), args.agent_id, tenant_id=args.tenant)
    cert, key = issued.write(directory, args.name or args.agent_id)
    if args.json:
        print_json({"certificate": str(cert), "key": str(key), "pin": issued.pin, "agentId": args.agent_id})
        return 0
    print(f"edge certificate: {cert}\nedge key:         {key}")
    print("tls.clientPins:")
    print(f'  {args.agent_id}: ["{issued.pin}"]')
    return 0


def _pin(args: argparse.Namespace) -> int:
    pins = {path: pins_of_pem_chain(Path(path).read_bytes()) for path in args.files}
    if args.json:
        print_json({"pins": [{"file": path, "pin": pin} for path, found in pins.items() for pin in found]})
        return 0
    for path, found in pins.items():
        for pin in found:
            print(f"{path}: {pin}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``aeterna certs ...``."""
    certs = subparsers.add_parser("certs", help="development CA, server/edge certificates and SPKI pins")
    commands = certs.add_subparsers(dest="certs_command", metavar="SUBCOMMAND", required=True)

    init_ca = commands.add_parser("init-ca", help="create a development CA (ca.crt, ca.key)")
    init_ca.add_argument("--dir", default="certs", help="output directory (default: certs)")
    init_ca.add_argument("--name", default="Aeterna Development CA", help="CA common name")
    init_ca.add_argument("--force", action="store_true", help="replace an existing CA")
    add_json(init_ca)
    init_ca.set_defaults(handler=_init_ca)

    server = commands.add_parser("server", help="issue central's server certificate and print its pin")
    server.add_argument("--dir", default="certs", help="directory holding the CA (default: certs)")
    server.add_argument("--host", action="append", help="DNS name or IP (repeatable; default localhost, 127.0.0.1)")
    server.add_argument("--name", default="server", help="file stem (default: server)")
    add_json(server)
    server.set_defaults(handler=_server)

    edge = commands.add_parser("edge", help="issue an edge client certificate (CN=agent id, OU=tenant)")
    edge.add_argument("--dir", default="certs", help="directory holding the CA (default: certs)")
    edge.add_argument("--agent-id", required=True, help="the edge's agent id")
    edge.add_argument("--tenant", default="default", help="tenant (default: default)")
    edge.add_argument("--name", help="file stem (default: the agent id)")
    add_json(edge)
    edge.set_defaults(handler=_edge)

    pin = commands.add_parser("pin", help="print the SPKI pin of each certificate in PEM files")
    pin.add_argument("files", nargs="+", metavar="FILE")
    add_json(pin)
    pin.set_defaults(handler=_pin)
