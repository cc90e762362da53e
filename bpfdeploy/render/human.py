"""Human output for plans, apply progress and diagnostics.

Written as plain text with ANSI colours (on a terminal, unless NO_COLOR is set), not through rich:
rich costs about 12 ms to import and a fraction of a millisecond per line, which on a plan of
hundreds of actions was most of an apply. The tables of status and probe use rich
(``rich_console``). The text takes rich's markup subset ([bold], [red], [dim], ... [/]), so
the same strings work with either.
"""

from __future__ import annotations

import os
import re
import sys

from bpfdeploy.plan import Kind, Plan

SYMBOL = {Kind.CREATE: ("+", "green"), Kind.UPDATE: ("~", "yellow"), Kind.REPLACE: ("-/+", "magenta"),
          Kind.DELETE: ("-", "red"), Kind.NOOP: ("=", "dim")}
_ANSI = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
         "cyan": "36", "white": "37"}
_TAG = re.compile(r"\\\[|\[(/?)([a-z ]*)\]")  # an escaped bracket, or a style tag


def escape(text: str) -> str:
    """Make text print as it is (no markup), as rich.markup.escape does."""
    return text.replace("[", "\\[")


class Writer:
    """print() with rich's markup subset, to a stream."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self._color: bool | None = None

    @property
    def color(self) -> bool:
        if self._color is None:
            self._color = (self.stream.isatty() and "NO_COLOR" not in os.environ
                           and os.environ.get("TERM") != "dumb") or "FORCE_COLOR" in os.environ
        return self._color

    def render(self, text: str) -> str:
        stack: list[str] = []

        def tag(m: re.Match) -> str:
            if m.group(0) == "\\[":  # an escaped bracket
                return "["
            if m.group(1):
                if stack:
                    stack.pop()
                return "\033[0m" + "".join(stack) if self.color else ""
            codes = ";".join(_ANSI[w] for w in m.group(2).split() if w in _ANSI)
            if not codes:
                return m.group(0)  # not a style: keep the text
            code = f"\033[{codes}m"
            stack.append(code)
            return code if self.color else ""
        out = _TAG.sub(tag, text)
        return out + ("\033[0m" if self.color and stack else "")

    def styled(self, text: str, style: str) -> str:
        """text in one style, as render(f"[{style}]{text}[/]") gives it for text without markup."""
        return f"\033[{_ANSI[style]}m{text}\033[0m" if self.color else text

    def print(self, text: str = "", markup: bool = True, **_ignored) -> None:
        self.stream.write((self.render(text) if markup else text) + "\n")
        self.stream.flush()


out = Writer(sys.stdout)
err = Writer(sys.stderr)


def rich_console(stderr: bool = False):
    """A rich Console, for the tables of status and probe (imported only then)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def diagnostics(diags, console: Writer = err) -> None:
    for d in diags:
        color = "red" if d.severity == "error" else "yellow"
        where = d.location()
        head = f"[bold {color}]{d.severity}[/]: " + (f"[bold]{escape(where)}[/]: " if where else "")
        console.print(head + escape(d.message))
        if d.hint:
            console.print(f"  [dim]hint:[/] {escape(d.hint)}")


def plan(p: Plan, verbose: bool = False, title: str = "Plan") -> None:
    lines: list[str] = []  # written at once: one write, not one per action (thousands at N = 2,000)
    shown = [a for a in p.actions if verbose or a.kind is not Kind.NOOP]
    lines.append(f"[bold]{title}[/] for deployment [cyan]{escape(p.name)}[/] (pin root {escape(p.pin_root)})")
    if p.artifacts:
        lines.append(f"  [dim]{escape(artifacts_line(p.artifacts))}[/]")
    width = max((len(a.address) for a in shown), default=0)
    for target in p.mounts:
        lines.append(f"  [green]  + mount  [/] bpffs on {escape(target)}  not mounted: apply mounts it, then plans again")
    for a in shown:
        sym, color = SYMBOL[a.kind]
        lines.append(f"  [{color}]{sym:>3} {a.kind.value:<7}[/] {escape(a.address):<{width}}  {escape(a.reason)}")
        pad = " " * 14
        before, after = (a.before.text if a.before else ""), (a.after.text if a.after else "")
        if a.entries:  # each changed key, old -> new, as Terraform shows attribute changes
            for e in a.entries:
                lines.append(f"{pad}[dim]{escape(e.text())}[/]")
        elif before and after and before != after and a.kind is not Kind.NOOP:
            lines.append(f"{pad}[dim]{escape(before)} -> {escape(after)}[/]")
        elif a.kind is Kind.CREATE and after:
            lines.append(f"{pad}[dim]{escape(after)}[/]")
        elif a.kind is Kind.DELETE and before:
            lines.append(f"{pad}[dim]{escape(before)}[/]")
        if a.transition:
            lines.append(f"{pad}[dim]{escape(a.transition)}[/]")
    for chain in p.chains:
        moved = any(e.moved for e in chain.entries)
        lines.append(f"  [bold]chain[/] on {escape(chain.hook)}: {escape(chain.describe())}"
                     + ("  [dim](* placed by this plan)[/]" if moved else ""))
    for c in p.conflicts:
        lines.append(f"[yellow]conflict[/]: {escape(c)}")
    out.print("\n".join(lines))
    diagnostics(p.diagnostics, out)
    counts = p.counts()
    if p.errors:  # never "the kernel matches" when something stops the plan
        out.print(f"[bold red]Plan stopped:[/] {len(p.errors)} error(s); nothing would be changed.")
    elif not p.pending:
        out.print("[green]No changes.[/] The kernel matches the manifest.")
    else:
        out.print(f"[bold]Plan:[/] {counts['create']} to create, {counts['update']} to update, "
                  f"{counts['replace']} to replace, {counts['delete']} to delete, {counts['no-op']} unchanged.")


def artifacts_line(artifacts: dict) -> str:
    """Which objects came from artifacts, and how they were trusted (the plan's ``artifacts``)."""
    sig = artifacts.get("signature")
    trust = (f"signature good, signed by {artifacts.get('principal')}" if sig == "good" else
             "signed, signature not checked: no allowed_signers" if sig == "not checked" else "unsigned")
    names = ", ".join(o["object"] for o in artifacts.get("objects", ()))
    return f"objects from artifacts {artifacts.get('directory')} ({trust}): {names}"


def step(action) -> None:
    sym, color = SYMBOL[action.kind]
    # No markup to parse: one line per step, thousands of them in a large apply.
    out.print(f"  {out.styled(sym, color)} {action.kind.value} {action.address}", markup=False)


def crash(message: str) -> None:
    err.print(f"[bold red]error[/]: {escape(message)}")

