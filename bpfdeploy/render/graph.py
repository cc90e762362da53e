"""`bpfdeploy graph`: the deployment as a Graphviz DOT graph, objects -> programs -> maps and hooks,
as `terraform graph` draws resources. Pure: made from the desired state, no kernel read.

    bpfdeploy graph manifests/sockmap-redirect.yaml | dot -Tsvg > deployment.svg

Nodes: each object (a folder shape), each program (an ellipse, with its type), each deployment
map (a cylinder, with its type and size) and each hook (a hexagon: the cgroup, device, netns or
traced function). Edges: object -> program (contains), program -> map (uses), program -> hook
(attached, labelled with the attach type and mode); a sockmap verdict's hook is its map.
"""

from __future__ import annotations

from bpfdeploy import hooks


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(desired) -> str:
    """The DOT text of a desired state (model.desired.DesiredState)."""
    lines = [f"digraph {_quote(desired.name)} {{", "  rankdir=LR;", '  node [fontname="Helvetica"];',
             f"  label={_quote(f'deployment {desired.name} (pin root {desired.pin_root})')}; labelloc=t;"]
    objects = sorted({p.object for p in desired.programs})
    for obj in objects:
        lines.append(f"  {_quote('object:' + obj)} [shape=folder, label={_quote(obj)}];")
    for m in desired.maps:
        kind = hooks.MAP_TYPE_NAMES.get(m.geometry.type, str(m.geometry.type))
        label = _quote(f"{m.name}\n{kind}, {m.geometry.max_entries} entries")
        lines.append(f"  {_quote('map:' + m.name)} [shape=cylinder, label={label}];")
    for p in desired.programs:
        label = _quote(f"{p.pin_name}\n{p.prog_type}")
        lines.append(f"  {_quote('prog:' + p.pin_name)} [shape=ellipse, label={label}];")
        lines.append(f"  {_quote('object:' + p.object)} -> {_quote('prog:' + p.pin_name)} [style=dashed];")
        for _inner, outer in p.maps:
            if desired.map(outer) is not None:
                lines.append(f"  {_quote('prog:' + p.pin_name)} -> {_quote('map:' + outer)} "
                             f"[arrowhead=none, color=gray40];")
    seen_hooks = set()
    for a in desired.attachments:
        if a.kind is hooks.HookKind.SOCKMAP:
            hook = "map:" + a.target
        else:
            hook = f"hook:{a.kind.value}:{a.target}"
            if hook not in seen_hooks:
                seen_hooks.add(hook)
                label = _quote(f"{a.kind.value}\n{a.target}")
                lines.append(f"  {_quote(hook)} [shape=hexagon, label={label}];")
        label = a.attach_type.short[0] + ("" if a.mode.value == "link" else f" ({a.mode.value})") + (
            " optional" if a.optional else "")
        lines.append(f"  {_quote('prog:' + a.program)} -> {_quote(hook)} [label={_quote(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
