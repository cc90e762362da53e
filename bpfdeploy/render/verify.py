"""Human output of `plan --verify`: one line per program the plan would load, and for each
refusal the end of the verifier log."""

from __future__ import annotations

from bpfdeploy.render.human import escape, out


def verification(v) -> None:
    if not v.verdicts:
        out.print("[bold]Verifier check[/]: the plan loads no new or changed program.")
        return
    out.print("[bold]Verifier check[/] (each program loaded and freed again; nothing pinned or attached):")
    width = max(len(x.program) for x in v.verdicts) + len("prog/")
    for x in v.verdicts:
        address = f"prog/{x.program}"
        if x.accepted:
            out.print(f"  [green]accepted[/] {escape(address):<{width}}  {escape(x.function)} of {escape(x.object)}")
            continue
        out.print(f"  [red]refused [/] {escape(address):<{width}}  {escape(x.message)}")
        for line in x.log_tail.splitlines():
            out.print(f"           [dim]{escape(line.strip())}[/]")
    refused = sum(not x.accepted for x in v.verdicts)
    out.print(f"[bold]Verifier:[/] {len(v.verdicts) - refused} accepted, {refused} refused.")
