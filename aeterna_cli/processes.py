"""Central and edge as child processes of ``aeterna``, for the demo and the tests.

A service writes a ready file (JSON: pid, port, metrics_port) once it serves;
``ServiceProcess.start`` waits for it, so nobody guesses ports or sleeps. Logs
go to a file beside the config and their tail is shown when start-up fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AETERNA = [sys.executable, "-m", "aeterna_cli.main"]

# Where each kind of service reads its listening port from.
_PORT_KEYS = {"central": ("sync", "listenPort"), "edge": ("edge", "listenPort")}


class ServiceStartError(RuntimeError):
    """A service exited or timed out before it was ready."""


@dataclass
class ServiceProcess:
    """A running (or startable) ``aeterna central`` or ``aeterna edge``."""

    kind: str
    config_path: Path
    ready_path: Path
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int = 0
    extra_args: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        """host:port for a client channel."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        """Start the process and wait until its ready file appears."""
        self.ready_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *AETERNA,
                    self.kind,
                    "--config",
                    str(self.config_path),
                    "--ready-file",
                    str(self.ready_path),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_path.exists():
                ready = json.loads(self.ready_path.read_text())
                self.port = int(ready["port"])
                self.metrics_port = int(ready.get("metrics_port") or 0)
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_text()[-6000:]
        self.kill()
        raise ServiceStartError(f"aeterna {self.kind} did not become ready; log tail:\n{tail}")

    def keep_port(self) -> None:
        """Rewrite the config so that a restart listens on the port bound now.

        Services start on port 0 (a free port); whoever points at them (edges at
        central) must find them on the same port after a restart, as they would
        in a real deployment.
        """
        document = yaml.safe_load(self.config_path.read_text()) or {}
        section, key = _PORT_KEYS[self.kind]
        document.setdefault(section, {})[key] = self.port
        write_config(self.config_path, document)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM) and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_text(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def write_config(path: Path, document: dict[str, Any]) -> Path:
    """Write a config document as YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def child_env() -> dict[str, str]:
    """The environment for a child service: ours, minus config overrides meant for us."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AETERNA_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServiceFactory:
    """Creates services under one root folder and stops them all on ``close``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[ServiceProcess] = []

    def make(self, kind: str, name: str, document: dict[str, Any], *, development: bool = True) -> ServiceProcess:
        """Prepare (without starting) a service whose config is ``document``.

        ``development`` (the default: the demo and the tests run local
        setups) passes ``--development``, which allows the public development
        signing key and ``sync.auth.method: none``; False starts the service
        in production mode, where it refuses those (exit status 2).
        """
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        service = ServiceProcess(
            kind=kind,
            config_path=write_config(home / "config.yaml", document),
            ready_path=home / "ready.json",
            log_path=home / "service.log",
            env=child_env(),
            extra_args=["--development"] if development else [],
        )
        self.started.append(service)
        return service

    def close(self) -> None:
        """Stop every service, newest first (edges before central)."""
        for service in reversed(self.started):
            service.stop(timeout=20)
            service.kill()
