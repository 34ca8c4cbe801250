"""A data directory owned by one process, and the child server that process runs in it.

Two guarantees, for the edge's owned redis-servers and central's embedded
PostgreSQL alike:

* **One owner per directory.** ``DataDirLock.acquire`` takes an exclusive
  ``flock`` on a lock file inside the directory and holds it for the owner's
  lifetime. The kernel drops the lock when the owner's last descriptor closes,
  so a SIGKILLed owner never leaves a stale lock. A second owner is refused
  with ``FailedPrecondition`` (reason ``DATA_DIR_IN_USE``) naming the
  directory and the pid that holds it.

* **No orphaned child.** The owner records the child server it launches in a
  pid file (pid, kernel start time, argv). On the next start, with the lock
  held, ``sweep_orphan`` looks at that record: a process that is alive, has
  the same start time, and whose ``/proc/<pid>/cmdline`` is that server with
  that directory was left running by an owner that died, and is stopped
  (SIGTERM, then SIGKILL) before a new one starts. Anything else (the pid is
  gone, reused by another process, or unreadable) is never signalled; the
  stale record is only removed.

``launch`` also asks Linux to SIGKILL the child when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, set by util-linux's ``setpriv --pdeathsig``,
which then execs the server). That is a belt, not the guarantee: the signal
fires when the *thread* that started the child exits, not the process, so it
is set only when launching from the main thread (a worker thread of an
executor may exit long before its process does, and would take the server
with it). It also does not cover the owner dying before ``setpriv`` runs, or
platforms without ``setpriv``. The orphan sweep covers all of these.

No Python code runs between fork and exec (no ``preexec_fn``, no ``user=``):
the launching processes run gRPC's threads, and a plain ``fork()`` runs
gRPC's fork handlers, which now and then crashed the child (SIGSEGV in the
event engine's poller) before it could exec. Without them Python starts the
child with ``vfork``, which runs no fork handlers at all.

No gRPC, no database driver: the only dependencies are the standard library
and ``aeterna_shared.errors``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aeterna_shared.errors import FailedPrecondition

__all__ = [
    "LOCK_FILE_NAME",
    "ChildPidFile",
    "ChildRecord",
    "DataDirLock",
    "is_alive",
    "is_server_of",
    "launch",
    "process_cmdline",
    "processes_working_in",
    "stop_process",
    "sweep_orphan",
]

_log = logging.getLogger(__name__)

LOCK_FILE_NAME = "owner.lock"
"""Name of the lock file inside an owned directory."""

_PROC = Path("/proc")


class DataDirLock:
    """An exclusive ``flock`` on ``<directory>/<name>``, held until ``release`` (or the owner's death).

    The lock file holds the owner's pid, for the error a second owner gets.
    The descriptor is close-on-exec, so a child server never inherits (and
    never outlives its owner holding) the lock.
    """

    def __init__(self, directory: Path, path: Path, fd: int) -> None:
        self.directory = directory
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path, *, name: str = LOCK_FILE_NAME, what: str = "data directory") -> DataDirLock:
        """Lock ``directory`` (created if missing) for this process, or raise ``DATA_DIR_IN_USE``.

        ``what`` names the directory's role in the error message ("edge data directory", ...).
        """
        directory = directory.absolute()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            by = f"process {holder}" if holder is not None else "another process"
            raise FailedPrecondition(
                f"{what} {directory} is in use by {by} (lock file {path}); "
                "two processes must never share one data directory: stop the other one or use another directory",
                reason="DATA_DIR_IN_USE",
                metadata={"directory": str(directory), "pid": str(holder) if holder is not None else ""},
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(directory, path, fd)

    @property
    def held(self) -> bool:
        """True until ``release``."""
        return self._fd is not None

    def release(self) -> None:
        """Give the directory up (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


# --- /proc ---------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, first)."""
    try:
        return (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def is_alive(pid: int) -> bool:
    """True when ``pid`` runs; a zombie (dead, not yet reaped) counts as dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): with the pid, it names one process."""
    fields = _stat_fields(pid)
    with contextlib.suppress(IndexError, ValueError, TypeError):
        return int(fields[19]) if fields is not None else None  # field 22 of stat
    return None


def process_cmdline(pid: int) -> list[str] | None:
    """argv of ``pid`` from /proc/<pid>/cmdline; None when it is gone, a zombie or unreadable."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def is_server_of(pid: int, *, executable: str, directory: Path) -> bool:
    """True when ``pid`` is alive and its command line is ``executable`` run on ``directory``.

    ``executable`` is a file name ("redis-server", "postgres"); ``directory``
    must appear as one whole argument (``--dir <directory>``, ``-D <directory>``).
    """
    if not is_alive(pid):
        return False
    argv = process_cmdline(pid)
    if not argv:
        return False
    return Path(argv[0]).name == executable and str(directory.absolute()) in argv[1:]


def processes_working_in(directory: Path) -> list[int]:
    """Live processes whose current directory is ``directory`` (those this process may inspect)."""
    target = directory.absolute()
    found: list[int] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(entry / "cwd")) == target and is_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def stop_process(pid: int, *, still_ours: Callable[[], bool], timeout: float = 10.0) -> bool:
    """SIGTERM ``pid``, then SIGKILL after ``timeout``; True once it is gone.

    ``still_ours`` is asked before every signal, so that a pid the kernel
    handed to another process in the meantime is never signalled. ``pid``
    need not be our child (an orphan is reaped by init), so this polls /proc.
    """
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not is_alive(pid):
            return True
        if not still_ours():
            return not is_alive(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and is_alive(pid):
            time.sleep(0.02)
    return not is_alive(pid)


# --- the child's pid file ----------------------------------------------------------------


@dataclass(frozen=True)
class ChildRecord:
    """What the owner wrote about the child it launched."""

    pid: int
    start_ticks: int | None
    argv: tuple[str, ...]


class ChildPidFile:
    """The pid file of the one child server an owner runs in its directory (JSON, replaced atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, pid: int, argv: Sequence[str]) -> None:
        """Record ``pid`` (with its kernel start time) and the argv it was started with."""
        record = {"pid": pid, "start_ticks": start_ticks(pid), "argv": list(argv)}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.path)

    def read(self) -> ChildRecord | None:
        """The record, or None when there is none (or it is unreadable: then nothing can be verified)."""
        try:
            raw = json.loads(self.path.read_text())
            ticks = raw.get("start_ticks")
            return ChildRecord(int(raw["pid"]), int(ticks) if ticks is not None else None, tuple(raw["argv"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def remove(self) -> None:
        """Forget the child."""
        self.path.unlink(missing_ok=True)

    def matches(self, record: ChildRecord, *, executable: str, directory: Path) -> bool:
        """True when ``record``'s pid is still that very process: same start time, same argv, our server and dir."""
        if not is_server_of(record.pid, executable=executable, directory=directory):
            return False
        if record.start_ticks is not None and start_ticks(record.pid) != record.start_ticks:
            return False
        return tuple(process_cmdline(record.pid) or ()) == record.argv


def sweep_orphan(
    lock: DataDirLock, pid_file: ChildPidFile, *, executable: str, directory: Path, timeout: float = 10.0
) -> int | None:
    """Stop the child a dead owner left running in ``directory``; returns its pid, or None.

    Call it holding ``lock``: then no live owner runs a child here, so a
    verified child is an orphan. Only a process that ``ChildPidFile.matches``
    is signalled.
    """
    if not lock.held:
        raise RuntimeError("sweep_orphan needs the directory's lock")
    record = pid_file.read()
    if record is None:
        pid_file.remove()
        return None

    def still_ours() -> bool:
        return pid_file.matches(record, executable=executable, directory=directory)

    stopped: int | None = None
    if still_ours():
        _log.warning("stopping %s (pid %d) left running in %s by an owner that died", executable, record.pid, directory)
        if not stop_process(record.pid, still_ours=still_ours, timeout=timeout):
            raise FailedPrecondition(
                f"{executable} pid {record.pid}, left running in {directory} by an owner that died, "
                "did not stop after SIGTERM and SIGKILL",
                reason="ORPHAN_NOT_STOPPED",
                metadata={"directory": str(directory), "pid": str(record.pid)},
            )
        stopped = record.pid
    elif is_alive(record.pid):
        _log.info(
            "pid file %s names pid %d, which is not %s on %s any more; leaving that process alone",
            pid_file.path,
            record.pid,
            executable,
            directory,
        )
    pid_file.remove()
    return stopped


# --- launching -----------------------------------------------------------------------------


def _parent_death_prefix() -> list[str]:
    """The command prefix that makes the child get SIGKILL when the launching thread dies (Linux only)."""
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or setpriv is None:
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


def run_as_prefix(user: str | None) -> list[str]:
    """The command prefix that runs a command as ``user`` (``[]`` for ourselves), without ``preexec_fn``.

    ``subprocess``'s own ``user=`` makes Python fork rather than vfork, and so
    run gRPC's fork handlers in the child (see the module docstring).
    """
    if user is None:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise FailedPrecondition(
            f"running a server as the system user {user!r} needs setpriv (Debian package util-linux)",
            reason="SETPRIV_MISSING",
        )
    return [setpriv, f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


def launch(argv: Sequence[str], pid_file: ChildPidFile, *, die_with_parent: bool = True) -> subprocess.Popen[bytes]:
    """Start the child server ``argv`` and record it in ``pid_file``.

    With ``die_with_parent`` (and when called from the main thread, see the
    module docstring) the child gets SIGKILL when this process dies. Its
    output goes nowhere: servers write their own log files.
    """
    prefix: list[str] = []
    if die_with_parent and threading.current_thread() is threading.main_thread():
        prefix = _parent_death_prefix()
    process = subprocess.Popen(
        [*prefix, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    try:
        pid_file.write(process.pid, argv)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process
