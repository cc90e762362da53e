"""One apply or destroy at a time per deployment: an flock on a file in the state directory.

Plans do not take the lock. The lock is held from before the live state is read until the
record is written, so a second apply plans against what the first one left.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from bpfdeploy.diagnostics import BpfdeployError
from bpfdeploy.record import state_dir

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms); type checkers read it as True
if TYPE_CHECKING:
    from typing import Callable, Iterator


class LockTimeout(BpfdeployError):
    """Another bpfdeploy process holds the deployment's lock."""


def _holder(fd: int) -> str:
    """'pid N' of the lock's holder, as the file says and /proc confirms.

    The holder writes its pid just after it takes the lock, and a pid left by an earlier holder
    stays in the file: only a pid that is alive is named.
    """
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    if text.isdigit() and os.path.exists(f"/proc/{text}"):
        return f"pid {text}"
    return "its pid is not written yet: it has just taken the lock"


@contextmanager
def deployment_lock(name: str, timeout: float, on_wait: Callable[[str], None] | None = None,
                    directory: Path | None = None) -> Iterator[None]:
    directory = directory or state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"deployment {name!r} is locked by another bpfdeploy process ({holder}); "
                                      f"gave up after {timeout:g} s (--lock-timeout)") from None
                if on_wait and not told:
                    on_wait(f"waiting for the lock on deployment {name!r}, held by {holder} ...")
                    told = True
                time.sleep(0.05)
        # Write the new pid before cutting the file to its length: the file is never seen empty.
        mine = f"{os.getpid()}\n".encode()
        os.pwrite(fd, mine, 0)
        os.ftruncate(fd, len(mine))
        yield
    finally:
        os.close(fd)  # releases the flock
