"""Human view of `bpfdeploy probe features` and `bpfdeploy probe check` (rich).

Program types are grouped as the BPF notes group them: tracing, networking (XDP, tc,
socket), cgroup, others. Results bpftool is known to get wrong here are marked where they
are shown, and explained under the table, never shown as plain truth.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bpfdeploy.diagnostics import Diagnostic
from bpfdeploy.probe import Features

out = Console(highlight=False)  # tables fold long cells (overflow="fold"): never an ellipsis
err = Console(stderr=True, highlight=False, soft_wrap=True)

PROGRAM_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tracing", ("kprobe", "tracepoint", "raw_tracepoint", "raw_tracepoint_writable", "perf_event", "tracing")),
    ("networking: XDP", ("xdp",)),
    ("networking: tc", ("sched_cls", "sched_act")),
    ("networking: socket", ("socket_filter", "sk_skb", "sk_msg", "sk_reuseport", "sk_lookup", "flow_dissector",
                            "lwt_in", "lwt_out", "lwt_xmit", "lwt_seg6local")),
    ("cgroup", ("cgroup_skb", "cgroup_sock", "cgroup_sock_addr", "cgroup_sockopt", "cgroup_sysctl",
                "cgroup_device", "sock_ops")),
    ("others", ("struct_ops", "ext", "lsm", "syscall", "netfilter", "lirc_mode2")),
)
# Program types whose rows also say whether their hooks can be attached (Features.attach_notes).
ATTACH_NOTES_FOR = {"kprobe": ("kprobe", "uprobe"), "tracepoint": ("tracepoint",), "tracing": ("fentry",),
                    "lsm": ("lsm",)}
SYSCTL_MEANING = {
    "unprivileged_bpf_disabled": {0: "unprivileged BPF allowed", 1: "disabled until reboot",
                                  2: "disabled (root may re-enable)"},
    "bpf_jit_enable": {0: "interpreter", 1: "JIT on", 2: "JIT on, debug output"},
    "bpf_stats_enabled": {0: "run-time stats off", 1: "run-time stats on"},
}


def _utf8(console: Console) -> bool:
    return console.encoding.lower().startswith("utf")


def mark(value: bool | None, console: Console, unknown: str = "unknown") -> str:
    yes, no, what = ("✔", "✘", "?") if _utf8(console) else ("+", "x", "?")
    if value is True:
        return f"[green]{yes} yes[/]"
    if value is False:
        return f"[red]{no} no[/]"
    return f"[yellow]{what} {unknown}[/]"


def _warn(console: Console) -> str:
    return "⚠" if _utf8(console) else "!"


def render_features(f: Features, *, program_types: bool = False, map_types: bool = False, helpers: str | None = None,
                    config: bool = False, console: Console | None = None) -> None:
    """The whole picture, or only the parts the filter flags name (they combine)."""
    console = console or out
    everything = not (program_types or map_types or helpers or config)
    if everything or config:
        _system(f, console)
    if everything or program_types:
        _program_types(f, console)
    if everything:
        _attach_notes(f, console)
    if everything or map_types:
        _map_types(f, console)
    if everything or config:
        _kernel_config(f, console)
    if helpers:
        _helpers(f, helpers, console)
    shown = {"helpers"} if everything else set()  # --helpers shows its caveat in a panel above the list
    if everything or config:
        shown.add("config")
    if everything or program_types:
        shown.add("program_types")
    _caveats(f, console, shown)
    when = f"cached probe from {f.probed_at}" if f.from_cache else f"probed {f.probed_at}"
    console.print(f"[dim]{escape(when)}, boot {escape(f.boot_id or 'unknown')}; --refresh probes again[/]")


def _title(text: str) -> str:
    return f"[bold]{escape(text)}[/]"


def _system(f: Features, console: Console) -> None:
    t = Table(title=_title("System configuration"), title_justify="left", show_header=False, box=None, padding=(0, 2))
    t.add_column(style="bold", overflow="fold")
    t.add_column(overflow="fold")
    v = f.versions
    t.add_row("kernel", escape(f.kernel_release or "unknown"))
    bpftool = v.bpftool or "unknown"
    if v.bpftool_libbpf:
        bpftool += f" (built with libbpf {v.bpftool_libbpf})"
    t.add_row("bpftool", escape(bpftool))
    t.add_row("libbpf (system)", escape(v.libbpf or "not found"))
    t.add_row("clang", escape(v.clang or "not found"))
    t.add_row("iproute2 (tc)", escape(v.iproute2 or "not found"))
    t.add_row("BPF syscall", mark(f.bpf_syscall, console))
    t.add_row("kernel BTF", mark(f.btf, console) + ("  [dim]/sys/kernel/btf/vmlinux[/]" if f.btf else ""))
    t.add_row("bpffs", _mount(f, ", ".join(f.bpffs) or None, console, "bpfdeploy apply mounts it at /sys/fs/bpf"))
    t.add_row("cgroup v2", _mount(f, f.cgroup2, console, "cgroup attachments need it"))
    t.add_row("tracefs", _mount(f, f.tracefs, console, "tracepoint attach needs it: mount -t tracefs nodev "
                                                     "/sys/kernel/tracing"))
    for name in ("unprivileged_bpf_disabled", "bpf_jit_enable", "bpf_stats_enabled"):
        value = getattr(f, name)
        meaning = SYSCTL_MEANING[name].get(value, "") if value is not None else "not readable"
        t.add_row(name, f"{'' if value is None else value}  [dim]{escape(meaning)}[/]".strip())
    if f.misc:
        t.add_row("verifier", "  ".join(f"{escape(k.replace('_', ' '))} {mark(v, console)}" for k, v in f.misc))
    console.print(t)
    console.print()


def _mount(f: Features, where: str | None, console: Console, hint: str) -> str:
    if not f.mounts_read:
        return mark(None, console)
    if where:
        return f"{mark(True, console)}  [dim]{escape(where)}[/]"
    return f"{mark(False, console)}  [dim]not mounted; {escape(hint)}[/]"


def _program_types(f: Features, console: Console) -> None:
    t = Table(title=_title("Program types") + "  [dim](bpftool feature probe)[/]", title_justify="left")
    t.add_column("group", style="bold", overflow="fold")
    t.add_column("program type", overflow="fold")
    t.add_column("available", overflow="fold")
    t.add_column("notes", overflow="fold")
    grouped = {name for _g, names in PROGRAM_GROUPS for name in names}
    extra = tuple(n for n in f.all_program_types() if n not in grouped)
    groups = PROGRAM_GROUPS[:-1] + ((PROGRAM_GROUPS[-1][0], PROGRAM_GROUPS[-1][1] + extra),)
    for g, (group, names) in enumerate(groups):
        for i, name in enumerate(names):
            have = f.program_type(name)
            notes = []
            if have is None:
                notes.append("[dim]bpftool does not probe this type[/]")
            if f.caveat(f"program_types.{name}"):
                notes.append(f"[yellow]{_warn(console)} unreliable (see below)[/]")
            for note_name in ATTACH_NOTES_FOR.get(name, ()):
                note = f.attach_note(note_name)
                if note is not None:
                    notes.append(f"{note_name} attach {mark(note.available, console)}")
            available = mark(have, console, unknown="not probed")
            if have is False and f.caveat(f"program_types.{name}"):
                available = f"[yellow]{'✘' if _utf8(console) else 'x'} no?[/]"
            t.add_row(escape(group) if i == 0 else "", escape(name), available, "; ".join(notes),
                      end_section=i == len(names) - 1 and g < len(groups) - 1)
    console.print(t)
    console.print()


def _attach_notes(f: Features, console: Console) -> None:
    if not f.attach_notes:
        return
    t = Table(title=_title("Attaching") + "  [dim](not covered by bpftool; checked by bpfdeploy)[/]",
              title_justify="left")
    t.add_column("hook", overflow="fold")
    t.add_column("possible", overflow="fold")
    t.add_column("evidence", overflow="fold")
    for n in f.attach_notes:
        t.add_row(escape(n.name), mark(n.available, console), escape(n.evidence))
    console.print(t)
    console.print()


def _map_types(f: Features, console: Console) -> None:
    cells = [(escape(n), mark(f.map_type(n), console, unknown="not probed")) for n in f.all_map_types()]
    _grid(_title("Map types") + "  [dim](bpftool feature probe)[/]", ("map type", "available"), cells, console)


def _kernel_config(f: Features, console: Console) -> None:
    # bpftool's selection of options; with the full config read, their values come from it.
    cells = []
    for name, _value in f.kernel_config:
        known, value = f.config(name)
        if not known:
            text = mark(None, console)
        elif value in ("y", "m"):
            text = f"[green]{value}[/]"
        elif value is None:
            text = "[red]not set[/]"
        else:
            text = escape(value)
        cells.append((escape(name), text))
    source = "from the full kernel config" if f.full_config is not None else "as bpftool reports them"
    _grid(_title("Kernel configuration") + f"  [dim]({source})[/]", ("option", "value"), cells, console, per_row=2)


def _grid(title: str, header: tuple[str, str], cells: list[tuple[str, str]], console: Console,
          per_row: int = 3) -> None:
    """(name, value) pairs in per_row column pairs, filled column by column (reads top to bottom)."""
    t = Table(title=title, title_justify="left")
    for _ in range(per_row):
        t.add_column(header[0], overflow="fold")
        t.add_column(header[1], overflow="fold")
    rows = (len(cells) + per_row - 1) // per_row
    for r in range(rows):
        row: list[str] = []
        for c in range(per_row):
            i = c * rows + r
            row += list(cells[i]) if i < len(cells) else ["", ""]
        t.add_row(*row)
    console.print(t)
    console.print()


def _helpers(f: Features, prog_type: str, console: Console) -> None:
    names = f.helpers_for(prog_type)
    if names is None:
        known = ", ".join(t for t, _h in f.helpers)
        console.print(f"[red]bpftool reports no helper list for {escape(prog_type)}[/]; it lists: {escape(known)}")
        return
    if not names:
        why = " (bpftool reports the program type unavailable)" if f.program_type(prog_type) is False else ""
        console.print(f"bpftool lists no helpers for {escape(prog_type)}{escape(why)}")
        return
    caveat = f.caveat("helpers")
    if caveat:
        from rich.panel import Panel

        console.print(Panel(
            f"[bold]bpftool's helper lists are not reliable on this host.[/] Do not read the list below as what "
            f"{escape(prog_type)} programs may call.\n{escape(caveat.reason)}",
            title=f"{_warn(console)} unreliable", border_style="yellow", title_align="left"))
    from rich.columns import Columns

    label = "as bpftool lists them, unverified" if caveat else "as bpftool lists them"
    console.print(_title(f"Helpers for {prog_type}") + f"  [dim]({len(names)}, {label})[/]")
    console.print(Columns([escape(n) for n in names], column_first=True, padding=(0, 2)))
    console.print()


def _caveats(f: Features, console: Console, shown: set[str]) -> None:
    relevant = [c for c in f.unreliable
                if c.subject in shown or c.subject.split(".")[0] in shown]
    for c in relevant:
        console.print(f"[yellow]{_warn(console)} unreliable: {escape(c.subject)}[/] - {escape(c.reason)}")
    if relevant:
        console.print()


def render_check(diagnostics: Sequence[Diagnostic], *, file: str = "", features: Features | None = None,
                 console: Console | None = None) -> None:
    """Each missing capability, then one line: does the manifest fit this host?"""
    console = console or out
    for d in diagnostics:
        color = "red" if d.severity == "error" else "yellow"
        where = d.location()
        head = f"[bold {color}]{d.severity}[/]: " + (f"[bold]{escape(where)}[/]: " if where else "")
        console.print(head + escape(d.message), soft_wrap=True)
        if d.hint:
            console.print(f"  [dim]hint:[/] {escape(d.hint)}", soft_wrap=True)
    errors = sum(1 for d in diagnostics if d.severity == "error")
    warnings = len(diagnostics) - errors
    host = f"this host (kernel {features.kernel_release})" if features and features.kernel_release else "this host"
    name = escape(file) if file else "the manifest"
    tail = f", {warnings} warning(s) (cannot tell; not blocking)" if warnings else ""
    if errors:
        yes_no = "✘" if _utf8(console) else "x"
        console.print(f"[red]{yes_no} {name} does not fit {escape(host)}[/]: {errors} missing capability(ies){tail}")
    else:
        yes_no = "✔" if _utf8(console) else "+"
        console.print(f"[green]{yes_no} {name} fits {escape(host)}[/]{tail}")
