"""Data flows one way, and only one module changes the kernel: checked from the source itself.

`python3 scripts/import-graph.py` prints the same import graph for a reader.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import-graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)

# Modules that must not reach the kernel at all, not even lazily: planning is pure, the model is data,
# the manifest is text, rendering only formats what it is given.
PURE = ("bpfdeploy.plan", "bpfdeploy.model", "bpfdeploy.manifest", "bpfdeploy.render", "bpfdeploy.diagnostics",
        "bpfdeploy.hooks", "bpfdeploy.order")

# libbpf calls that change the kernel (kernel/libbpf.py defines them; kernel/apply.py alone calls them).
MUTATING_LIBBPF = {"load_object", "obj_pin", "link_create", "link_create_flags", "link_create_ordered", "link_update", "link_detach",
                   "prog_attach", "prog_detach", "map_update", "map_delete", "raw_tracepoint_open",
                   "perf_event_open"}
# Words that make a bpftool, tc or ip command line a change rather than a read.
MUTATING_WORDS = {"load", "loadall", "attach", "detach", "pin", "update", "delete", "create", "add", "replace",
                  "del", "change", "mount", "register", "unregister"}
# apply.py changes the kernel only through kernel/door.py, which forwards to libbpf.py (and os, tc).
MAY_MUTATE = {"bpfdeploy/kernel/apply.py", "bpfdeploy/kernel/door.py", "bpfdeploy/kernel/libbpf.py"}


def _in(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_pure_modules_never_import_kernel():
    bad = [f"{src} -> {dst}" for src, dst, _lazy in import_graph.edges()
           if _in(src, PURE) and _in(dst, ("bpfdeploy.kernel",))]
    assert not bad, "pure modules import kernel/: " + ", ".join(bad)


def test_plan_imports_only_pure_modules():
    allowed = PURE + ("bpfdeploy.model",)
    bad = [dst for src, dst, _lazy in import_graph.edges() if src == "bpfdeploy.plan" and not _in(dst, allowed)]
    assert not bad, f"plan.py imports {bad}"


def _mutating_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
        if name in MUTATING_LIBBPF:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}()")
        if name in ("run", "start", "Popen") and node.args and isinstance(node.args[0], ast.List):
            words = [e.value for e in node.args[0].elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if words and words[0] in ("bpftool", "tc", "ip", "mount") and MUTATING_WORDS & set(words[1:]):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {' '.join(words)}")
    return found


def test_only_apply_changes_the_kernel():
    bad = []
    for path in sorted((ROOT / "bpfdeploy").rglob("*.py")):
        if str(path.relative_to(ROOT)) not in MAY_MUTATE:
            bad += _mutating_calls(path)
    assert not bad, "mutating calls outside kernel/apply.py: " + "; ".join(bad)


def test_the_scan_finds_mutations_where_they_are():
    # The check above must be able to fail: apply.py really holds such calls.
    assert len(_mutating_calls(ROOT / "bpfdeploy/kernel/apply.py")) >= 5


# The desired state, the model and the planner are pure functions of what they are given: they
# reach no kernel/ module and write no file, even through what they import (lazily or not). The
# object info they join with the manifest is read beforehand by bpfdeploy/object_info.py.
PURE_CLOSURE = ("bpfdeploy.desired", "bpfdeploy.model", "bpfdeploy.plan")
# Calls that create, change or remove a file or directory.
FILE_WRITES = {"write_text", "write_bytes", "touch", "mkdir", "makedirs", "rmdir", "unlink", "rename",
               "symlink_to", "chmod", "chown", "dump"}


def _reachable(starts) -> set[str]:
    edges = import_graph.edges()
    seen = {src for src, _dst, _lazy in edges if _in(src, starts)}
    todo = list(seen)
    while todo:
        module = todo.pop()
        for src, dst, _lazy in edges:
            if src == module and dst not in seen:
                seen.add(dst)
                todo.append(dst)
    return seen


def _module_file(module: str) -> Path:
    base = ROOT / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _file_writes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Attribute) and fn.attr in FILE_WRITES:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{fn.attr}()")
        elif isinstance(fn, ast.Name) and fn.id == "open":
            modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
            if any(not (isinstance(m, ast.Constant) and set(str(m.value)) <= set("rbt")) for m in modes):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} open() for writing")
    return found


def test_desired_model_and_plan_reach_no_kernel_module():
    reached = _reachable(PURE_CLOSURE)
    assert "bpfdeploy.desired" in reached and "bpfdeploy.plan" in reached
    bad = sorted(m for m in reached if _in(m, ("bpfdeploy.kernel",)))
    assert not bad, f"desired.py, model/ or plan.py reach kernel/ through their imports: {bad}"


def test_desired_model_and_plan_write_no_file():
    bad = []
    for module in sorted(_reachable(PURE_CLOSURE)):
        bad += _file_writes(_module_file(module))
    assert not bad, "desired.py, model/ or plan.py (or what they import) write files: " + "; ".join(bad)


def test_the_file_write_scan_finds_writes_where_they_are():
    # Both checks above must be able to fail: object_info.py reaches libbpf and writes its cache.
    assert any(_in(m, ("bpfdeploy.kernel",)) for m in _reachable(("bpfdeploy.object_info",)))
    assert len(_file_writes(ROOT / "bpfdeploy/object_info.py")) >= 2
