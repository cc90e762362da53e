#!/usr/bin/env python3
"""Print which bpfdeploy modules import which (module level and lazily inside functions).

    python3 scripts/import-graph.py            # every edge, "a -> b" (lazy imports marked "(lazy)")
    python3 scripts/import-graph.py --upward   # only the edges that run against the data flow

The layers, in the order data flows: model < manifest < build < object_info < desired < kernel.live/probe <
plan < kernel.apply < workflow < render/cli. An edge from a lower layer to a higher one is "upward".
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bpfdeploy"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def edges() -> list[tuple[str, str, bool]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        src = module_name(path)
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        # Imports under `if TYPE_CHECKING:` only name types for annotations: they never run.
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bpfdeploy"):
                names = [node.module] if node.module != "bpfdeploy" else [f"bpfdeploy.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("bpfdeploy")]
            for name in names:
                if name != src:
                    out.append((src, name, id(node) not in top))
    return sorted(set(out))


LAYERS = ["bpfdeploy.diagnostics", "bpfdeploy.model", "bpfdeploy.manifest", "bpfdeploy.hooks", "bpfdeploy.host",
          "bpfdeploy.kernel.runner", "bpfdeploy.build", "bpfdeploy.kernel.libbpf", "bpfdeploy.kernel.elfsym",
          "bpfdeploy.kernel.netns", "bpfdeploy.object_info", "bpfdeploy.desired", "bpfdeploy.record", "bpfdeploy.kernel.live",
          "bpfdeploy.probe", "bpfdeploy.plan", "bpfdeploy.kernel.apply", "bpfdeploy.lock", "bpfdeploy.status",
          "bpfdeploy.metrics", "bpfdeploy.workflow", "bpfdeploy.render", "bpfdeploy.cli"]


def layer(name: str) -> int:
    best = -1
    for i, prefix in enumerate(LAYERS):
        if name == prefix or name.startswith(prefix + "."):
            best = i
    return best


def main() -> int:
    upward = "--upward" in sys.argv
    for src, dst, lazy in edges():
        if upward and not layer(dst) > layer(src):
            continue
        print(f"{src} -> {dst}{' (lazy)' if lazy else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
