"""Advisory locks on a run folder, so two live processes never write the same run.

`nhr run` holds ``.nhr-run.lock`` for its whole life; every stage run holds
``.nhr-writer.lock`` while it writes. Both are ``flock`` locks: the kernel drops them
when the holder dies, so a crashed run's leftovers never block a rerun, while a live
holder is named (pid and command line) in the error.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

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
