"""Rich views of status and map dumps."""

from __future__ import annotations

import json
import time

from rich.markup import escape
from rich.table import Table

from bpfdeploy.render.human import rich_console

out = rich_console()

COLOR = {"in sync": "green", "missing": "red", "drifted": "yellow", "unknown": "dim"}
WIDE = 4096  # columns of a --wide table: each identifier stays on one line


def fit(wide: bool = False) -> None:
    """Tables fit the terminal (80 columns or COLUMNS), wrapping a long name or path over lines,
    never cutting it with an ellipsis. With --wide, or when the output is not a terminal (a pipe
    into grep or a file), every cell stays on one line, as long as it needs."""
    if wide or not out.is_terminal:
        out.width = WIDE
    else:
        out.soft_wrap = False  # lines of text (the status header) wrap at the terminal's width too


def _keep(table: Table, column: int, values, cap: int = 24) -> None:
    """A column of names is never narrower than its longest name (up to CAP): short identifiers
    stay whole, and what wraps is the long text (paths, hooks)."""
    longest = max((len(v) for v in values), default=0)
    # Never more than twice a fair share of the width: rich crops a table whose minimum widths do not fit.
    share = 2 * (out.width - 3 * len(table.columns) - 1) // len(table.columns)
    table.columns[column].min_width = max(1, min(cap, share, max(longest, len(str(table.columns[column].header)))))


def _table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    # overflow="fold": a cell too long for its column continues on the next line (rich's default,
    # "ellipsis", would cut deployment names and paths short).
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold", justify="right" if col in right else "left")
    return table


def deployments(items) -> None:
    if not items:
        out.print("No bpfdeploy deployments on this host.")
        return
    table = _table("Deployments", "name", "pin root", "programs", "links", "maps", "manifest")
    _keep(table, 0, [d.name for d in items], cap=32)  # paths are what wraps first
    for d in items:
        table.add_row(escape(d.name), escape(d.pin_root) + ("" if d.exists else " [red](missing)[/]"),
                      str(d.programs), str(d.links), str(d.maps), escape(d.manifest or "?"))
    out.print(table)


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def status_table(s):
    """The status of one deployment as a renderable (also used by --watch)."""
    from rich.console import Group

    parts = []
    health = "[green]in sync[/]" if s.healthy else "[yellow]drifted[/]" if s.deployed else "[red]not deployed[/]"
    parts.append(f"[bold]Deployment[/] [cyan]{escape(s.name)}[/] ({escape(s.pin_root)}): {health}")
    progs = _table("Programs", "program", "id", "type", "attached to", "state", "loaded at")
    _keep(progs, 0, [p.name for p in s.programs])
    _keep(progs, 2, [p.type for p in s.programs], cap=18)
    if s.stats_window is not None:
        progs.add_column(f"runs ({s.stats_window:g} s)", justify="right", overflow="fold")
        progs.add_column("avg run time", justify="right", overflow="fold")
    for p in s.programs:
        row = [escape(p.name), str(p.id or "-"), p.type, escape("\n".join(p.attached) or "-"),
               f"[{COLOR.get(p.state, 'white')}]{p.state}[/]" + (f"\n[dim]{escape(p.reason)}[/]" if p.reason else ""),
               _when(p.loaded_at)]
        if s.stats_window is not None:
            avg = f"{p.run_time_ns / p.run_cnt:.0f} ns" if p.run_cnt else "-"
            row += [str(p.run_cnt if p.run_cnt is not None else "-"), avg]
        progs.add_row(*row)
    parts.append(progs)
    maps = _table("Maps", "map", "id", "geometry", "entries", "state")
    _keep(maps, 0, [m.name for m in s.maps])
    for m in s.maps:
        maps.add_row(escape(m.name), str(m.id or "-"), m.geometry, str(m.entries if m.entries is not None else "-"),
                     f"[{COLOR.get(m.state, 'white')}]{m.state}[/]" + (f"\n[dim]{escape(m.reason)}[/]" if m.reason else ""))
    parts.append(maps)
    if s.attachments:
        atts = _table("Attachments", "attachment", "program", "hook", "state")
        _keep(atts, 1, [a.program for a in s.attachments])
        for a in s.attachments:
            atts.add_row(escape(a.name), escape(a.program), escape(a.hook),
                         f"[{COLOR.get(a.state, 'white')}]{a.state}[/]" + (f"\n[dim]{escape(a.reason)}[/]" if a.reason else ""))
        parts.append(atts)
    for x in s.extra:
        parts.append(f"[yellow]not in the manifest[/]: {escape(x)}")
    for c in s.conflicts:
        parts.append(f"[yellow]conflict[/]: {escape(c)}")
    for e in s.errors:  # why every state above is "unknown"
        parts.append(f"[red]error[/]: {escape(e)}")
    if s.stats_window is not None:
        parts.append(f"[dim]Run counts were measured over {s.stats_window:g} s with kernel.bpf_stats_enabled=1, "
                     "which was restored afterwards.[/]")
    return Group(*parts)


def dump(entries: list[dict], title: str) -> None:
    per_cpu = any("per_cpu" in e for e in entries)
    columns = ("key", "value (sum of CPUs)", "per CPU") if per_cpu else ("key", "value")
    table = _table(title, *columns)
    for e in entries:
        row = [escape(_compact(e.get("key"))), escape(_compact(e.get("value")))]
        if per_cpu:
            row.append(escape(" ".join(f"{cpu}:{_compact(v)}" for cpu, v in enumerate(e.get("per_cpu") or ()))))
        table.add_row(*row)
    out.print(table)
    out.print(f"{len(entries)} entries")


def _compact(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
