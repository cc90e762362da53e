"""Enter a network namespace for a moment (device lookups, tcx/xdp links, queries there).

Only the calling thread moves (setns), and the mount namespace is untouched, so bpffs pins
stay visible; ``ip netns exec`` would remount /sys and hide them. External commands use
``nsenter --net=FILE`` for the same reason.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def entered(netns_file: str | None) -> Iterator[None]:
    """Run the body inside netns_file (None: stay where we are)."""
    if not netns_file:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_file, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def command(argv: list[str], netns_file: str | None) -> list[str]:
    """argv run inside netns_file."""
    return ["nsenter", f"--net={netns_file}", *argv] if netns_file else argv
