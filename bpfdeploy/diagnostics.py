"""Diagnostics and the small family of exceptions the CLI turns into messages and exit codes."""

from __future__ import annotations

import enum

from bpfdeploy.model.frozen import frozen


class ExitCode(enum.IntEnum):
    """Process exit codes of every command: the one table (README "Exit codes").

    0, 1 and 2 are Terraform's; the others are distinct so that wrappers (Ansible,
    systemd, CI scripts) can tell them apart without parsing text.
    """

    OK = 0
    ERROR = 1  # something failed; an apply that failed was rolled back
    CHANGES = 2  # plan --detailed-exitcode only: changes are pending
    DRIFTED = 3  # status: the kernel differs from the manifest, or the deployment is not deployed
    LOCKED = 4  # another bpfdeploy holds the deployment's lock past --lock-timeout: retry later
    PARTIAL = 5  # apply finished, but an attachment marked optional failed (the rest is applied)
    USAGE = 64  # the command line is wrong (sysexits EX_USAGE); nothing was read or changed
    INTERNAL = 70  # an unexpected crash (sysexits EX_SOFTWARE); the traceback is in a file


class Severity(enum.StrEnum):
    """How bad a diagnostic is: an error stops plan and apply; a warning is shown and goes on."""

    ERROR = "error"
    WARNING = "warning"


@frozen
class Diagnostic:
    """One problem found in a manifest or on the host.

    file: the manifest (or other input) the problem is in; path: where in the manifest,
    as a dotted/indexed path (``attachments[2].cgroup``); line: 1-based, when known.
    """

    message: str
    file: str = ""
    path: str = ""
    line: int | None = None
    hint: str = ""
    severity: Severity = Severity.ERROR  # a plain "error"/"warning" string compares equal
    column: int | None = None  # 1-based, when known (YAML syntax errors)

    def location(self) -> str:
        where = self.file
        if self.line is not None:
            at = f"{self.line}:{self.column}" if self.column is not None else f"{self.line}"
            where = f"{where}:{at}" if where else f"line {at}"
        if self.path:
            where = f"{where}: {self.path}" if where else self.path
        return where

    def format(self) -> str:
        text = f"{self.severity}: {self.location()}: {self.message}" if self.location() else f"{self.severity}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_json(self) -> dict:
        return {
            "severity": self.severity,
            "file": self.file,
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "hint": self.hint,
        }


class BpfdeployError(Exception):
    """Base of every error the CLI reports as a message rather than a traceback."""

    def __init__(self, message: str, diagnostics: tuple[Diagnostic, ...] = ()):
        super().__init__(message)
        self.message = message
        self.diagnostics = diagnostics


class ManifestError(BpfdeployError):
    """The manifest is invalid; ``diagnostics`` lists every problem found."""


class BuildError(BpfdeployError):
    """clang failed, or an object could not be opened."""


class KernelError(BpfdeployError):
    """A kernel operation failed (load, pin, attach, query)."""

    def __init__(self, message: str, errno: int = 0, log: str = ""):
        super().__init__(message)
        self.errno = errno
        self.log = log


class ApplyError(BpfdeployError):
    """An apply step failed; the steps done before it were rolled back."""

    def __init__(self, message: str, step: str = "", detail: str = "", rollback: tuple[str, ...] = ()):
        super().__init__(message)
        self.step = step
        self.detail = detail
        self.rollback = rollback


class HostError(BpfdeployError):
    """The host lacks something the command needs (root, bpffs, a tool)."""
