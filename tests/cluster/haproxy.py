"""A real HAProxy (Debian's 2.6) in front of several central replicas, as a child process of the test.

Why HAProxy and not a Python proxy: the questions the cluster suite asks are about what a real
balancer does to gRPC — per-call balancing of HTTP/2 streams (what a mesh's Envoy does), per-connection
balancing of TCP (what a cloud LoadBalancer does), health checks that take a dead or not-ready replica
out, and per-server connection counts an operator would read. A toy proxy would answer them for itself.

Two frontends share one process and one set of servers:

* ``h2``: ``mode http``, ``bind ... proto h2`` and ``server ... proto h2``; every gRPC call (a stream)
  is balanced on its own (``roundrobin``);
* ``tcp``: ``mode tcp``; a connection goes to one replica for its whole life (``leastconn``, so that
  reconnections forced by ``central.maxConnectionAge`` land on the emptiest replica).

Health checks speak gRPC: HAProxy 2.6 cannot send a binary HTTP/2 body from ``http-check``, so the check
is a ``tcp-check`` that writes the HTTP/2 connection preface, an empty SETTINGS frame, one HEADERS frame
(HPACK literals: ``POST /grpc.health.v1.Health/Check``, ``content-type: application/grpc``) and a DATA
frame holding an empty ``HealthCheckRequest`` (service ``""``: central's readiness), then expects the
serialized ``HealthCheckResponse{status: SERVING}`` (``00 00000002 0801``) among the bytes that come back.
A replica that is NOT_SERVING (PostgreSQL unreachable) times the check out; a dead one refuses it.

Server state is read and changed over the stats socket (``show stat``, ``set server ... state``), the
runtime API an operator would use; scale-out enables servers listed ``disabled`` in the config.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)

SERVING_REPLY = "00000000020801"
"""gRPC message frame of ``HealthCheckResponse{status: SERVING}``: uncompressed, length 2, field 1 = 1."""


def _hpack_literal(name: str, value: str) -> bytes:
    """An HPACK 'literal header field without indexing, new name' (no Huffman); short names and values only."""
    raw_name, raw_value = name.encode(), value.encode()
    assert len(raw_name) < 127
    assert len(raw_value) < 127
    return bytes([0x00, len(raw_name)]) + raw_name + bytes([len(raw_value)]) + raw_value


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def grpc_health_check_bytes() -> bytes:
    """What the tcp-check sends: an HTTP/2 client opening and one ``grpc.health.v1.Health/Check`` call."""
    headers = (
        bytes([0x83, 0x86])  # static table: :method POST, :scheme http
        + _hpack_literal(":path", "/grpc.health.v1.Health/Check")
        + _hpack_literal(":authority", "haproxy-check")
        + _hpack_literal("content-type", "application/grpc")
        + _hpack_literal("te", "trailers")
    )
    return (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + _frame(0x4, 0x0, 0, b"")  # SETTINGS (defaults)
        + _frame(0x1, 0x4, 1, headers)  # HEADERS, END_HEADERS
        + _frame(0x0, 0x1, 1, b"\x00\x00\x00\x00\x00")  # DATA, END_STREAM: an empty HealthCheckRequest
    )


@dataclass(frozen=True)
class Backend:
    """A replica as HAProxy knows it."""

    name: str
    port: int
    enabled: bool = True


class HAProxy:
    """One HAProxy process: an ``h2`` and a ``tcp`` frontend over the same replicas, with a stats socket."""

    def __init__(self, directory: Path, servers: list[Backend], *, h2_port: int, tcp_port: int) -> None:
        if HAPROXY is None:
            raise RuntimeError("haproxy is not installed (apt-get install -y haproxy; scripts/bootstrap does it)")
        self.directory = directory
        self.servers = servers
        self.h2_port = h2_port
        self.tcp_port = tcp_port
        # A Unix socket path must stay under ~108 bytes; pytest's tmp paths can be longer.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="aeterna-haproxy-"))
        self.stats_socket = self._socket_dir / "stats.sock"
        self.config_path = directory / "haproxy.cfg"
        self.log_path = directory / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """The generated configuration (also written beside the log for whoever debugs a failure)."""
        check = grpc_health_check_bytes().hex()
        lines = [
            "global",
            f"  stats socket {self.stats_socket} mode 600 level admin",
            "  maxconn 4000",
            "defaults",
            "  timeout connect 1s",
            # Long-lived streams (WatchPolicies, sync streams) are idle for long stretches.
            "  timeout client 1h",
            "  timeout server 1h",
            "  timeout tunnel 1h",
            "  timeout check 1s",
            "  retries 3",
            "  option redispatch",
            "frontend fe_h2",
            "  mode http",
            f"  bind 127.0.0.1:{self.h2_port} proto h2",
            "  default_backend be_h2",
            "frontend fe_tcp",
            "  mode tcp",
            f"  bind 127.0.0.1:{self.tcp_port}",
            "  default_backend be_tcp",
        ]
        for name, mode, balance, proto in (
            ("be_h2", "http", "roundrobin", " proto h2"),
            ("be_tcp", "tcp", "leastconn", ""),
        ):
            lines += [
                f"backend {name}",
                f"  mode {mode}",
                f"  balance {balance}",
                "  option tcp-check",
                "  tcp-check connect",
                f"  tcp-check send-binary {check}",
                f"  tcp-check expect binary {SERVING_REPLY}",
                # Checked every 300 ms, out after 2 failures, back after 1 success.
                "  default-server check inter 300ms fall 2 rise 1",
            ]
            lines += [
                f"  server {s.name} 127.0.0.1:{s.port}{proto}{'' if s.enabled else ' disabled'}" for s in self.servers
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> HAProxy:
        """Start ``haproxy -db`` (foreground, no daemon) and wait until its stats socket answers."""
        assert HAPROXY is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [HAPROXY, "-f", str(self.config_path), "-db"], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited at start:\n{self.log_path.read_text(errors='replace')}")
            with contextlib.suppress(OSError):
                self.command("show info")
                return self
            time.sleep(0.05)
        raise RuntimeError("haproxy's stats socket did not answer")

    def command(self, line: str) -> str:
        """One runtime-API command over the stats socket; returns the answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            connection.connect(str(self.stats_socket))
            connection.sendall(line.encode() + b"\n")
            chunks: list[bytes] = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stats(self) -> list[dict[str, str]]:
        """``show stat`` as rows (one per frontend, server and backend)."""
        text = self.command("show stat").lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def server_rows(self, backend: str) -> dict[str, dict[str, str]]:
        """The rows of ``backend``'s servers, by server name."""
        return {
            row["svname"]: row
            for row in self.stats()
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def current_sessions(self, backend: str) -> dict[str, int]:
        """Per server, the sessions HAProxy holds open to it now (``scur``: connections in tcp, streams in h2)."""
        return {name: int(row["scur"] or 0) for name, row in self.server_rows(backend).items()}

    def total_sessions(self, backend: str) -> dict[str, int]:
        """Per server, every session HAProxy ever sent it (``stot``)."""
        return {name: int(row["stot"] or 0) for name, row in self.server_rows(backend).items()}

    def status(self, backend: str) -> dict[str, str]:
        """Per server, ``UP``/``DOWN``/``MAINT`` (as the health checks see it)."""
        return {name: row["status"] for name, row in self.server_rows(backend).items()}

    def set_state(self, server: str, state: str) -> None:
        """``set server <backend>/<server> state ready|drain|maint`` on both backends."""
        for backend in ("be_h2", "be_tcp"):
            answer = self.command(f"set server {backend}/{server} state {state}").strip()
            if answer:
                raise RuntimeError(f"haproxy refused 'set server {backend}/{server} state {state}': {answer}")

    def wait_status(self, backend: str, wanted: dict[str, str], limit: float = 30.0) -> float:
        """Wait until the servers named in ``wanted`` have those statuses (prefix match); returns seconds waited."""
        began = time.monotonic()
        seen: dict[str, str] = {}
        while time.monotonic() - began < limit:
            seen = self.status(backend)
            if all(seen.get(name, "").startswith(state) for name, state in wanted.items()):
                return time.monotonic() - began
            time.sleep(0.05)
        raise AssertionError(f"haproxy {backend}: wanted {wanted}, still {seen} after {limit:.0f}s")

    def stop(self) -> None:
        """Stop HAProxy (SIGTERM, then SIGKILL) and remove the socket folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self._socket_dir, ignore_errors=True)
