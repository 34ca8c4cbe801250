"""A real HTTPS server in a thread, for the identity providers central talks to (an OIDC issuer, the Kubernetes API).

Routes map a path to a function of the request that answers (status, JSON
object). Every request is counted per path, so tests can assert how often
central asked. The certificate comes from a CA made for the test with
``aeterna_security.certs`` (not the gRPC test CA), so the tests also show that
central trusts exactly the CA its ``caFile`` key names.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aeterna_security.certs import create_ca, create_server_cert


@dataclass(frozen=True)
class HttpRequest:
    """What a route sees of a request."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


Route = Callable[[HttpRequest], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class HttpsPki:
    """A CA (its certificate is what central's caFile names) and a server certificate for localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path) -> HttpsPki:
    """A fresh CA and a localhost server certificate written under ``directory``."""
    ca = create_ca("Test IdP CA")
    ca_file, _ = ca.write(directory, "idp-ca")
    cert_file, key_file = create_server_cert(ca, ["localhost", "127.0.0.1"]).write(directory, "idp-server")
    return HttpsPki(ca_file, cert_file, key_file)


@dataclass
class HttpsServer:
    """The running server: ``url`` (https://localhost:<port>), ``routes`` (changeable live), request counts."""

    pki: HttpsPki
    routes: dict[str, Route] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    requests: list[HttpRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    port: int = 0

    @property
    def url(self) -> str:
        """The base URL."""
        return f"https://localhost:{self.port}"

    def start(self) -> HttpsServer:
        """Listen on 127.0.0.1 (on the same port as before when restarted)."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                path = self.path.split("?", 1)[0]
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                request = HttpRequest(self.command, path, {k.lower(): v for k, v in self.headers.items()}, body)
                owner.counts[path] += 1
                owner.requests.append(request)
                route = owner.routes.get(path)
                status, document = route(request) if route else (404, {"error": "not found"})
                raw = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.cert_file, self.pki.key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="test-https", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused from now on."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
