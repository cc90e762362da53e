"""Human output with rich: plan tables, apply progress, diagnostics."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from bpfdeploy.diagnostics import Diagnostic
from bpfdeploy.plan import Kind, Plan

SYMBOL = {Kind.CREATE: ("+", "green"), Kind.UPDATE: ("~", "yellow"), Kind.REPLACE: ("-/+", "magenta"),
          Kind.DELETE: ("-", "red"), Kind.NOOP: ("=", "dim")}

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def diagnostics(diags, console: Console = err) -> None:
    for d in diags:
        color = "red" if d.severity == "error" else "yellow"
        where = d.location()
        head = f"[bold {color}]{d.severity}[/]: " + (f"[bold]{escape(where)}[/]: " if where else "")
        console.print(head + escape(d.message))
        if d.hint:
            console.print(f"  [dim]hint:[/] {escape(d.hint)}")


def plan(p: Plan, verbose: bool = False, title: str = "Plan") -> None:
    shown = [a for a in p.actions if verbose or a.kind is not Kind.NOOP]
    out.print(f"[bold]{title}[/] for deployment [cyan]{escape(p.name)}[/] (pin root {escape(p.pin_root)})")
    width = max((len(a.address) for a in shown), default=0)
    for a in shown:
        sym, color = SYMBOL[a.kind]
        out.print(f"  [{color}]{sym:>3} {a.kind.value:<7}[/] {escape(a.address):<{width}}  {escape(a.reason)}")
        pad = " " * 14
        if a.before and a.after and a.before != a.after and a.kind is not Kind.NOOP:
            out.print(f"{pad}[dim]{escape(a.before)} -> {escape(a.after)}[/]")
        elif a.kind is Kind.CREATE and a.after:
            out.print(f"{pad}[dim]{escape(a.after)}[/]")
        elif a.kind is Kind.DELETE and a.before:
            out.print(f"{pad}[dim]{escape(a.before)}[/]")
        if a.transition:
            out.print(f"{pad}[dim]{escape(a.transition)}[/]")
    for c in p.conflicts:
        out.print(f"[yellow]conflict[/]: {escape(c)}")
    diagnostics(p.diagnostics, out)
    counts = p.counts()
    if not p.changes:
        out.print("[green]No changes.[/] The kernel matches the manifest.")
    else:
        out.print(f"[bold]Plan:[/] {counts['create']} to create, {counts['update']} to update, "
                  f"{counts['replace']} to replace, {counts['delete']} to delete, {counts['no-op']} unchanged.")


def step(action) -> None:
    sym, color = SYMBOL[action.kind]
    out.print(f"  [{color}]{sym}[/] {escape(action.kind.value)} {escape(action.address)}")


def crash(message: str) -> None:
    err.print(f"[bold red]error[/]: {escape(message)}")


def is_tty() -> bool:
    return sys.stdout.isatty()
