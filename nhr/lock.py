"""Advisory locks on a run folder, so two live processes never write the same run.

`nhr run` holds ``.nhr-run.lock`` for its whole life; every stage run holds
``.nhr-writer.lock`` while it writes.

On a path both are ``flock`` locks (``RunLock``): the kernel drops them when the holder
dies, so a crashed run's leftovers never block a rerun, while a live holder is named
(pid and command line) in the error.

On an object store there is no flock and no rename, and ``pyarrow.fs`` offers no
conditional PUT, so ``ObjectLock`` is a lease: an object holding the owner (a random
token, host, pid, command) and a heartbeat time, rewritten by a daemon thread every
``heartbeat_seconds``. A lease whose heartbeat is older than ``stale_seconds`` (its
holder died without releasing) or whose holder is a dead process on this host is free.
To take a free lease a process writes its own token, waits ``settle_seconds`` and reads
the object back: of racers who all saw it free, only the last writer reads its own token
(object stores are read-after-write consistent), and the others back off. The heartbeat
first checks the token is still its own, so a lease taken over from a holder paused past
``stale_seconds`` is noticed, not overwritten back.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from nhr.errors import RunFolderError


def _describe(pid_text: str) -> str:
    """'pid N (command line)' for the lock holder, as well as can be told."""
    try:
        pid = int(pid_text.split()[0])
    except (ValueError, IndexError):
        return "another process"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        cmd = ""
    return f"process {pid}" + (f" ({cmd[:120]})" if cmd else "")


class RunLock:
    """An exclusive flock on ``path``; ``what`` names the lock in errors."""

    def __init__(self, path: Path, what: str, wait_seconds: float = 0.0) -> None:
        self.path = Path(path)
        self.what = what
        self.wait_seconds = wait_seconds
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, waiting up to ``wait_seconds``; raise naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace")
                    os.close(fd)
                    raise RunFolderError(
                        f"{self.path.parent} is being written by {_describe(holder)} ({self.what})",
                        "wait for it to finish or stop it, or use another --run-dir",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class LeaseFiles(Protocol):
    """What a lease needs of a store (``nhr.store.files.Files``)."""

    def write_bytes(self, rel: str, data: bytes | memoryview) -> None: ...

    def read_bytes(self, rel: str) -> bytes: ...

    def delete(self, rel: str) -> None: ...

    def describe(self, rel: str = "") -> str: ...


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ObjectLock:
    """An exclusive lease object ``rel`` on an object store (see the module docstring)."""

    def __init__(
        self,
        files: LeaseFiles,
        rel: str,
        what: str,
        wait_seconds: float = 0.0,
        stale_seconds: float = 30.0,
        heartbeat_seconds: float = 5.0,
        settle_seconds: float = 0.3,
    ) -> None:
        self.files = files
        self.rel = rel
        self.what = what
        self.wait_seconds = wait_seconds
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.settle_seconds = settle_seconds
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.files.read_bytes(self.rel))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # a damaged lease is no lease

    def _write(self) -> None:
        body = {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": " ".join(sys.argv)[:200],
            "what": self.what,
            "heartbeat": time.time(),
        }
        self.files.write_bytes(self.rel, json.dumps(body).encode())

    def _free(self, lease: dict[str, Any] | None) -> bool:
        """Whether a lease read from the store may be taken."""
        if not lease or lease.get("token") == self.token:
            return True
        if time.time() - float(lease.get("heartbeat", 0.0)) > self.stale_seconds:
            return True
        same_host = lease.get("host") == socket.gethostname()
        return same_host and not _pid_alive(int(lease.get("pid", 0)))

    def acquire(self) -> ObjectLock:
        """Take the lease, waiting up to ``wait_seconds``; raise naming the live holder."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            lease = self._read()
            if self._free(lease):
                self._write()
                time.sleep(self.settle_seconds)
                lease = self._read()
                if lease and lease.get("token") == self.token:
                    break
            if time.monotonic() >= deadline:
                holder = lease or {}
                raise RunFolderError(
                    f"{self.files.describe()} is being written by process {holder.get('pid')}"
                    f" on {holder.get('host')} ({holder.get('command', '')[:120]}; "
                    f"{self.what}; lease {self.files.describe(self.rel)})",
                    "wait for it to finish or stop it, or use another --run-dir (a dead "
                    f"holder's lease expires {self.stale_seconds:.0f} s after its last "
                    "heartbeat)",
                )
            time.sleep(min(0.5, max(0.05, self.settle_seconds)))
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(self._stop,), daemon=True)
        self._thread.start()
        return self

    def _beat(self, stop: threading.Event) -> None:
        """Renew the lease until released; give up (``lost``) if another took it."""
        while not stop.wait(self.heartbeat_seconds):
            try:
                lease = self._read()
                if not lease or lease.get("token") != self.token:
                    self.lost = True
                    return
                self._write()
            except OSError:
                continue  # a missed heartbeat; the next one may get through

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        if self._stop is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._stop = self._thread = None
        lease = self._read()
        if lease is not None and lease.get("token") == self.token:
            self.files.delete(self.rel)

    def __enter__(self) -> ObjectLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
