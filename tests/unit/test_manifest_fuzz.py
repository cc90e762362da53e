"""Property test: mutated manifests give diagnostics, never a traceback.

Each example starts from one of the bundled manifests under ``manifests/`` (sources made
absolute), applies one to three random mutations (a key deleted, an unknown or misspelt key, a
known field where it does not belong, a value of the wrong type or of the right shape but the
wrong meaning, hostile path strings, duplicated list items, deep nesting, swapped sections) and
sometimes damages the YAML text (truncation, a tab, broken indentation, stray characters,
bytes that are not UTF-8). Then it calls ``load_manifest`` and, when that succeeds,
``workflow.prepare`` (clang, with a build cache shared by all examples, so few builds run).

What must hold:
- the only exceptions are BpfdeployError subclasses;
- every diagnostic has a file and a message, and one at a manifest path has a line;
- a manifest that loads stands for the whole document: no object, map or attachment is
  silently left out.

``test_hostile_strings_in_every_path_field`` covers exhaustively what random draws reach
rarely: every path-like field of every example set to every hostile string. A few mutants also
go through ``bpfdeploy validate`` and ``plan`` in a subprocess: exit 1, no traceback.

The mutation engine (``mutate``) takes its decisions from a ``Chooser``: hypothesis draws here
(so failures shrink), a seeded ``random.Random`` in ``bench/reliability.py``, which applies the
same mutants on a real kernel. ``--hypothesis-show-statistics`` shows the mix of outcomes.

Bugs found here and not fixed yet are listed in KNOWN_BUGS, each recognised by its exception
and the function that raises it; the property tests tolerate exactly those, and a strict
xfail test below reproduces each. A fix makes its xfail pass, which fails the run until the
mark and the entry are removed.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import random
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bpfdeploy.diagnostics import BpfdeployError, ManifestError
from bpfdeploy.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests").glob("*.yaml"))

# -------------------------------------------------------------------------------------------
# The mutation engine


class Chooser(Protocol):
    """Where the random decisions come from (hypothesis draws, or a seeded Random)."""

    def integer(self, lo: int, hi: int) -> int: ...

    def choice(self, options: Sequence) -> Any: ...


class RandomChooser:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence) -> Any:
        return options[self.rng.randrange(len(options))]


class DrawChooser:
    """Decisions drawn through hypothesis, so failing examples shrink."""

    def __init__(self, data):
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def choice(self, options: Sequence) -> Any:
        return options[self.data.draw(st.integers(0, len(options) - 1))]


def example_documents() -> dict[str, dict]:
    """The bundled examples, parsed, with their source and file paths made absolute."""
    docs = {}
    for path in EXAMPLES:
        data = yaml.safe_load(path.read_text())
        for obj in data["objects"].values():
            for key in ("source", "file"):
                if key in obj:
                    obj[key] = str((path.parent / obj[key]).resolve())
        docs[path.name] = data
    return docs


def _schema_fields() -> dict[str, list[dict]]:
    """Every property name the schema knows, with the sub-schemas it has wherever it appears.

    Read from the schema, not listed here, so that fields added later are fuzzed too.
    """
    import json

    from bpfdeploy.manifest.load import SCHEMA_PATH

    fields: dict[str, list[dict]] = {}

    def walk(node):
        if isinstance(node, dict):
            for name, sub in (node.get("properties") or {}).items():
                fields.setdefault(name, []).append(sub)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(SCHEMA_PATH.read_text()))
    return fields


SCHEMA_FIELDS = _schema_fields()
# Field names the schema knows: adding one where it does not belong, or giving it a value of the
# right shape but the wrong meaning, reaches the semantic checks rather than only "unknown field".
KNOWN_FIELDS = tuple(sorted(SCHEMA_FIELDS))
PATH_FIELDS = ("source", "file", "pin_root", "cgroup", "path", "netns", "map", "program", "pin", "name", "device",
               "binary", "target", "include_dirs")
STRINGS = ("", " ", ".", "..", "/", "./", "../..", "../../etc/passwd", "/etc", "/sys/fs/bpf", "/sys/fs/bpf/..",
           "/sys/fs/bpf/bpfdeploy", "/sys/fs/bpf/x/../../y", "/sys/fs/cgroup", "/proc/1/ns/net", "a/b", "a.b",
           "x" * 300, "ünïcödé", "名前", "🐝", "tab\there", "line\nbreak", "nul\x00byte", "null", "yes", "~",
           "0x", "0xZZ", "0x0a000001", "ingres", "sock_ops", "msg_verdict", "flow_dissector", "multi",
           "exclusive", "recreate", "seed", "count_ingress", "sock_ops_map", "bpfdeploy-x", "-", "*", "%s", "{}")
NUMBERS = (0, 1, -1, 7, 255, 256, 2**31, 2**32, -(2**31), 2**63, 2**64, 10**30, -(10**30), 0.5, -1.5, 1e308,
           math.inf, -math.inf, math.nan)
KEYS = ("unknown", "Name", "objets", "attachment", "colour", "x-extra", "", " ", "123", 123, True, None, "ü",
        "programs ", "__proto__", "$ref")


def random_value(ch: Chooser, depth: int = 0) -> Any:
    kind = ch.choice(("str", "num", "none", "bool", "list", "dict", "date", "bytes") if depth < 3 else
                     ("str", "num", "none", "bool"))
    if kind == "str":
        return ch.choice(STRINGS)
    if kind == "num":
        return ch.choice(NUMBERS)
    if kind == "none":
        return None
    if kind == "bool":
        return ch.choice((True, False))
    if kind == "list":
        return [random_value(ch, depth + 1) for _ in range(ch.integer(0, 3))]
    if kind == "dict":
        return {ch.choice(KEYS + KNOWN_FIELDS): random_value(ch, depth + 1) for _ in range(ch.integer(0, 3))}
    if kind == "date":
        return datetime.date(2024, 2, 29)
    return b"\x00\xffbytes"


def schema_value(ch: Chooser, schema: dict, depth: int = 0) -> Any:
    """A value of roughly the shape the schema asks for (patterns and bounds are not honoured)."""
    if "$ref" in schema:
        from bpfdeploy.manifest.load import load_schema

        target: Any = load_schema()
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_value(ch, target, depth)
    for key in ("anyOf", "oneOf"):
        if key in schema and not schema.get("type"):
            return schema_value(ch, ch.choice(schema[key]), depth)
    if "enum" in schema:
        return ch.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = ch.choice(kind)
    if kind == "string":
        return ch.choice(STRINGS + ("x", "lo", "eth0", "count_ingress", "sock_ops_map", "tcp_v4_connect",
                                    "/bin/true", "main", "ingress", "egress"))
    if kind == "integer":
        return ch.choice(NUMBERS[:13])
    if kind == "number":
        return ch.choice(NUMBERS)
    if kind == "boolean":
        return ch.choice((True, False))
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items", {})
        if depth >= 3:
            return []
        return [schema_value(ch, items, depth + 1) for _ in range(ch.integer(0 if depth else 1, 2))]
    if kind == "object" and depth < 3:
        props = schema.get("properties") or {}
        out = {}
        for name in schema.get("required", ()):
            if name in props:
                out[name] = schema_value(ch, props[name], depth + 1)
        if props and ch.integer(0, 1):
            name = ch.choice(sorted(props))
            out[name] = schema_value(ch, props[name], depth + 1)
        return out
    return {}


def field_value(ch: Chooser, name: Any) -> Any:
    """A value for a field: usually of the shape the schema gives it, sometimes anything."""
    if isinstance(name, str) and name in SCHEMA_FIELDS and ch.integer(0, 3):
        return schema_value(ch, ch.choice(SCHEMA_FIELDS[name]))
    return random_value(ch)


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path into the document (dict keys and list indices), the root first."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _nodes(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _nodes(v, path + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _set(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _typo(ch: Chooser, key: str) -> str:
    if not key:
        return "x"
    i = ch.integer(0, len(key) - 1)
    how = ch.choice(("drop", "double", "swap", "case", "plural", "space", "dash"))
    if how == "drop":
        out = key[:i] + key[i + 1:]
    elif how == "double":
        out = key[:i] + key[i] + key[i:]
    elif how == "swap" and len(key) > 1:
        i = min(i, len(key) - 2)
        out = key[:i] + key[i + 1] + key[i] + key[i + 2:]
    elif how == "case":
        out = key.swapcase()
    elif how == "plural":
        out = key + "s"
    elif how == "space":
        out = key + " "
    else:
        out = key.replace("_", "-") if "_" in key else key + "_"
    return out if out != key else key + "x"


def _structural(ch: Chooser, doc: Any) -> tuple[Any, str]:
    """One mutation of the parsed document; returns the new document and what was done."""
    nodes = _nodes(doc)
    dict_nodes = [p for p in nodes if isinstance(_get(doc, p), dict)]
    keyed = [p for p in nodes if p and isinstance(_get(doc, p[:-1]), dict)]
    lists = [p for p in nodes if isinstance(_get(doc, p), list) and _get(doc, p)]
    what = ch.choice(("delete", "add-unknown", "add-known", "typo", "retype", "reshape", "path-string",
                      "duplicate", "nest", "swap", "swap-siblings"))
    if what == "delete" and keyed:
        path = ch.choice(keyed)
        del _get(doc, path[:-1])[path[-1]]
        return doc, f"delete {path}"
    if what in ("add-unknown", "add-known") and dict_nodes:
        path = ch.choice(dict_nodes)
        key = ch.choice(KEYS if what == "add-unknown" else KNOWN_FIELDS)
        value = field_value(ch, key)
        _get(doc, path)[key] = value
        return doc, f"add {key!r}={value!r} at {path}"
    if what == "typo" and keyed:
        path = ch.choice(keyed)
        parent = _get(doc, path[:-1])
        new = _typo(ch, str(path[-1]))
        # Rebuild the mapping so that the renamed key keeps its place.
        items = [(new if k == path[-1] else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)
        return doc, f"rename {path} -> {new!r}"
    if what == "reshape" and keyed:
        # A value of the right shape for its field (a valid enum, a list of strings, ...).
        path = ch.choice(keyed)
        value = field_value(ch, path[-1])
        return _set(doc, path, value), f"set {path} = {value!r}"
    if what == "path-string":
        candidates = [p for p in keyed if p[-1] in PATH_FIELDS] or nodes
        path = ch.choice(candidates)
        value = ch.choice(STRINGS)
        return _set(doc, path, value), f"set {path} = {value!r}"
    if what == "duplicate" and lists:
        path = ch.choice(lists)
        items = _get(doc, path)
        items.append(copy.deepcopy(ch.choice(items)))
        return doc, f"duplicate an item of {path}"
    if what == "nest":
        path = ch.choice(nodes)
        depth = ch.integer(1, 60)
        value = _get(doc, path)
        for _ in range(depth):
            value = [value] if ch.integer(0, 1) else {"x": value}
        return _set(doc, path, value), f"nest {path} {depth} deep"
    if what == "swap" and isinstance(doc, dict) and len(doc) > 1:
        keys = list(doc)
        a, b = ch.choice(keys), ch.choice(keys)
        doc[a], doc[b] = doc[b], doc[a]
        return doc, f"swap sections {a!r} and {b!r}"
    if what == "swap-siblings" and dict_nodes:
        parent = _get(doc, ch.choice(dict_nodes))
        if len(parent) > 1:
            keys = list(parent)
            a, b = ch.choice(keys), ch.choice(keys)
            parent[a], parent[b] = parent[b], parent[a]
            return doc, f"swap {a!r} and {b!r}"
    # retype (also the fallback when the chosen mutation had nothing to work on)
    path = ch.choice(nodes)
    value = random_value(ch)
    return _set(doc, path, value), f"set {path} = {value!r}"


def _raw(ch: Chooser, text: str) -> tuple[str, str]:
    """One mutation of the YAML text."""
    lines = text.splitlines(keepends=True) or [""]
    i = ch.integer(0, len(lines) - 1)
    what = ch.choice(("truncate", "tab", "indent", "dedent", "dup-line", "insert", "replace-all"))
    if what == "truncate":
        at = ch.integer(0, len(text))
        return text[:at], f"truncate at {at}"
    if what == "tab":
        lines[i] = "\t" + lines[i]
        return "".join(lines), f"tab before line {i + 1}"
    if what == "indent":
        lines[i] = " " * ch.integer(1, 3) + lines[i]
        return "".join(lines), f"indent line {i + 1}"
    if what == "dedent":
        lines[i] = lines[i].lstrip(" ")
        return "".join(lines), f"dedent line {i + 1}"
    if what == "dup-line":
        lines.insert(i, lines[i])
        return "".join(lines), f"duplicate line {i + 1}"
    if what == "insert":
        at = ch.integer(0, len(text))
        junk = ch.choice((":", "- ", "{", "[", "\"", "'", "&a ", "*a", "*nope", "!!python/object:os.system ",
                          "!!binary ", "%YAML 1.1\n", "---\n", "...\n", "@", "`", "\x00", "\ufeff", "#", "? ",
                          "<<: *a\n"))
        return text[:at] + junk + text[at:], f"insert {junk!r} at {at}"
    body = ch.choice(("", "\n", "# only a comment\n", "- a list\n", "just a scalar\n", "~\n", "[1, 2]\n",
                      "{version: 1}\n", "--- 1\n--- 2\n"))
    return body, f"replace the file with {body!r}"


@dataclass
class Mutant:
    base: str  # example file name
    steps: list[str] = field(default_factory=list)
    text: str = ""
    raw_bytes: bytes | None = None  # set when the file is not valid UTF-8

    def write(self, path: Path) -> Path:
        if self.raw_bytes is not None:
            path.write_bytes(self.raw_bytes)
        else:
            path.write_text(self.text, encoding="utf-8")
        return path


def mutate(ch: Chooser, docs: dict[str, dict] | None = None, max_steps: int = 3) -> Mutant:
    """A mutated manifest: 1..max_steps document mutations, then maybe some text damage."""
    docs = docs or example_documents()
    base = ch.choice(sorted(docs))
    doc = copy.deepcopy(docs[base])
    mutant = Mutant(base)
    for _ in range(ch.choice(tuple(n for n in (1, 1, 1, 2, 3) if n <= max_steps))):
        doc, step = _structural(ch, doc)
        mutant.steps.append(step)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=bool(ch.integer(0, 1)), width=10_000)
    for _ in range(ch.choice((0, 0, 0, 1, 1, 2))):
        text, step = _raw(ch, text)
        mutant.steps.append(step)
    mutant.text = text
    if ch.integer(0, 30) == 0:
        raw = text.encode()
        at = ch.integer(0, len(raw))
        mutant.raw_bytes = raw[:at] + b"\xff\xfe" + raw[at:]
        mutant.steps.append(f"invalid UTF-8 at byte {at}")
    return mutant


# -------------------------------------------------------------------------------------------
# What counts as a good failure


def diagnostic_problems(exc: BpfdeployError, manifest: Path) -> list[str]:
    """What is wrong with the way an error reports itself (empty: it is a good diagnostic)."""
    out = []
    if not exc.message:
        out.append("the error has no message")
    if isinstance(exc, ManifestError) and not exc.diagnostics:
        out.append("a ManifestError without diagnostics")
    for d in exc.diagnostics:
        if not d.file:
            out.append(f"no file: {d}")
        if not d.message.strip():
            out.append(f"empty message: {d}")
        # A problem with the whole document (path "") may have no line: an unreadable file,
        # an empty one. Anything at a manifest path is in the text, so it has a line.
        if d.path and d.line is None:
            out.append(f"manifest path {d.path!r} without a line: {d}")
    return out


def dropped_items(mutant: Mutant, manifest) -> list[str]:
    """Objects, maps or attachments of the document that a successfully loaded manifest lacks.

    A manifest that loads must stand for the whole document: an item the checks could not
    read has to be an error, not silently left out (it would be deployed without it).
    """
    try:
        doc = yaml.safe_load(mutant.text)
    except Exception:  # noqa: BLE001 - bpfdeploy's loader accepted it; nothing to compare with
        return []
    if not isinstance(doc, dict):
        return []
    out = []
    for section, have in (("objects", [o.name for o in manifest.objects]), ("maps", [m.name for m in manifest.maps])):
        for name in (doc.get(section) if isinstance(doc.get(section), dict) else {}):
            if name not in have:
                out.append(f"{section}.{name}")
    count = len(doc.get("attachments") if isinstance(doc.get("attachments"), list) else ())
    if count != len(manifest.attachments):
        out.append(f"attachments: {count} in the document, {len(manifest.attachments)} loaded")
    return out


@dataclass(frozen=True)
class KnownBug:
    """A crash this test found that is not fixed yet, recognised by its exception and where it is raised.

    Each has a strict xfail test below (``test``); when the fix lands that test passes, fails
    strictly, and the entry and its xfail mark are removed.
    """

    test: str
    exception: type[BaseException] | tuple[type[BaseException], ...]
    message: str  # regex on str(exception)
    where: str  # "module.py:function" of the innermost bpfdeploy frame


KNOWN_BUGS: tuple[KnownBug, ...] = ()


def known_bug(exc: BaseException) -> KnownBug | None:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}bpfdeploy{os.sep}" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else ""
    for bug in KNOWN_BUGS:
        if isinstance(exc, bug.exception) and re.search(bug.message, str(exc)) and where == bug.where:
            return bug
    return None


def known_bug_in_traceback(text: str) -> KnownBug | None:
    """The known bug behind a traceback the CLI wrote for an internal error (bench/reliability.py)."""
    import builtins

    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', text)
    frames = [(f, fn) for f, fn in frames if f"{os.sep}bpfdeploy{os.sep}" in f]
    last = text.strip().splitlines()[-1] if text.strip() else ""
    name, _, message = last.partition(": ")
    exc_type = getattr(builtins, name, None)
    if not frames or not isinstance(exc_type, type):
        return None
    where = f"{Path(frames[-1][0]).name}:{frames[-1][1]}"
    for bug in KNOWN_BUGS:
        if issubclass(exc_type, bug.exception) and re.search(bug.message, message) and where == bug.where:
            return bug
    return None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has_nul, value))
    return False


def check_mutant(mutant: Mutant, workdir: Path, cgroup_root: Path, build: bool = True) -> str:
    """Load (and, when it loads, prepare) a mutant; return 'invalid', 'valid' or 'known-bug'.

    Raises AssertionError for an exception that is not a BpfdeployError, for a poor
    diagnostic, or for a manifest that loads without part of its document.
    """
    from bpfdeploy.workflow import prepare

    path = mutant.write(workdir / "manifest.yaml")
    steps = "\n  ".join(mutant.steps)
    context = f"mutant of {mutant.base}:\n  {steps}\n--- text ---\n{mutant.text}"
    try:
        manifest, _ = load_manifest(path, cgroup_root=cgroup_root)
        dropped = dropped_items(mutant, manifest)
        if dropped and _has_nul(yaml.safe_load(mutant.text)):
            return "known-bug"  # test_nul_byte_in_a_path_is_an_error_not_a_dropped_item
        assert not dropped, f"a manifest that loads lost part of the document: {dropped}\n{context}"
        if build:
            prepare(path)
    except BpfdeployError as exc:
        problems = diagnostic_problems(exc, path)
        assert not problems, "poor diagnostics:\n" + "\n".join(problems) + "\n" + context
        return "invalid"
    except Exception as exc:  # noqa: BLE001 - exactly what the test looks for
        if known_bug(exc):
            return "known-bug"
        raise AssertionError(f"{type(exc).__name__}: {exc}\n{context}") from exc
    return "valid"


# -------------------------------------------------------------------------------------------
# The tests


DOCS = example_documents()


@pytest.fixture(scope="module")
def fuzz_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    cgroup_root = base / "cgroup"
    (cgroup_root / "existing").mkdir(parents=True)
    return base, cgroup_root


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_manifests_give_only_diagnostics(fuzz_dirs, monkeypatch, data):
    base, cgroup_root = fuzz_dirs
    # One build cache for every example: a source that did not change is built once.
    monkeypatch.setenv("BPFDEPLOY_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("BPFDEPLOY_STATE_DIR", str(base / "state"))
    mutant = mutate(DrawChooser(data), DOCS)
    with tempfile.TemporaryDirectory(dir=base) as work:
        event(check_mutant(mutant, Path(work), cgroup_root))  # --hypothesis-show-statistics shows the mix


HOSTILE = ("", ".", "..", "/", "./x", "../../etc/passwd", "/etc/passwd", "/proc/1/ns/net", "/sys/fs/bpf",
           "/sys/fs/bpf/..", "/sys/fs/bpf/bpfdeploy", "/sys/fs/cgroup", "x" * 300, "a/" * 2100, "nul\x00byte",
           "ünïcödé/名前", "line\nbreak", " padded ", "~", "*", "$HOME", "-rf")


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda text: repr(text[:16]))
def test_hostile_strings_in_every_path_field(fuzz_dirs, monkeypatch, hostile):
    """Exhaustive where hypothesis is thin: each path-like field of each example, set to each hostile string."""
    base, cgroup_root = fuzz_dirs
    monkeypatch.setenv("BPFDEPLOY_CACHE_DIR", str(base / "cache"))
    tried = 0
    for name, doc in DOCS.items():
        for path in _nodes(doc):
            if not path or path[-1] not in PATH_FIELDS or isinstance(_get(doc, path), (dict, list)):
                continue
            mutated = _set(copy.deepcopy(doc), path, hostile)
            mutant = Mutant(name, [f"set {path} = {hostile!r}"], yaml.safe_dump(mutated, sort_keys=False))
            with tempfile.TemporaryDirectory(dir=base) as work:
                check_mutant(mutant, Path(work), cgroup_root)
            tried += 1
    assert tried >= 20


# Examples that need nothing from the host but a cgroup v2 root (the others name devices,
# network namespaces or binaries that may not exist here): unmutated, they must be valid.
HOST_INDEPENDENT = ("cgroup-counters.yaml", "connect-policy.yaml", "sockmap-redirect.yaml")


def test_the_unmutated_examples_load_and_build(fuzz_dirs, monkeypatch):
    """The starting point: every example loads without a crash; the host-independent ones are valid."""
    base, cgroup_root = fuzz_dirs
    monkeypatch.setenv("BPFDEPLOY_CACHE_DIR", str(base / "cache"))
    results = {}
    for name, doc in DOCS.items():
        mutant = Mutant(name, text=yaml.safe_dump(doc, sort_keys=False))
        with tempfile.TemporaryDirectory(dir=base) as work:
            results[name] = check_mutant(mutant, Path(work), cgroup_root)
    assert {name: results.get(name) for name in HOST_INDEPENDENT} == dict.fromkeys(HOST_INDEPENDENT, "valid")


def cli_mutants(count: int, seed: int = 5) -> list[Mutant]:
    """Deterministic mutants that load_manifest refuses (so validate and plan must exit 1)."""
    rng = random.Random(seed)
    out: list[Mutant] = []
    with tempfile.TemporaryDirectory() as work:
        while len(out) < count:
            mutant = mutate(RandomChooser(rng), DOCS)
            try:
                load_manifest(mutant.write(Path(work) / "m.yaml"))
            except ManifestError:
                out.append(mutant)
            except Exception:  # noqa: BLE001 - a known crash: not what this test is about
                continue
    return out


@pytest.mark.parametrize("mutant", cli_mutants(4), ids=lambda m: m.base)
def test_cli_reports_mutated_manifests_without_traceback(tmp_path, mutant):
    path = mutant.write(tmp_path / "manifest.yaml")
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    for command in ("validate", "plan"):
        proc = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", command, str(path)], env=env,
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        output = proc.stdout + proc.stderr
        context = f"bpfdeploy {command} on a mutant of {mutant.base} ({'; '.join(mutant.steps)}):\n{output}"
        assert proc.returncode == 1, context
        assert "Traceback" not in output and "internal error" not in output, context
        assert "error" in proc.stderr, context


# -------------------------------------------------------------------------------------------
# Bugs found by the property test, each reproduced. Remove the xfail mark (and the KNOWN_BUGS
# entry) with the fix.


def _load_doc(tmp_path: Path, doc: dict | str) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def _counters(**changes) -> dict:
    doc = copy.deepcopy(DOCS["cgroup-counters.yaml"])
    doc.update(changes)
    return doc


def _expect_diagnostic(path: Path, cgroup_root: Path, manifest_path: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cgroup_root=cgroup_root)
    assert any(d.path.startswith(manifest_path) and d.line for d in info.value.diagnostics), info.value.diagnostics


# Found by the property test and fixed since: kept as regression tests.


def test_program_pin_that_is_a_mapping_is_a_diagnostic(tmp_path):
    doc = copy.deepcopy(DOCS["sockmap-redirect.yaml"])
    doc["objects"]["sockops"]["programs"]["bpf_sockops_handler"]["pin"] = {"x": "sockops"}
    _expect_diagnostic(_load_doc(tmp_path, doc), tmp_path, "objects.sockops.programs.bpf_sockops_handler.pin")


def test_link_name_that_is_a_list_is_a_diagnostic(tmp_path):
    doc = copy.deepcopy(DOCS["sockmap-redirect.yaml"])
    doc["attachments"][1]["name"] = ["redirect-verdict"]
    _expect_diagnostic(_load_doc(tmp_path, doc), tmp_path, "attachments[1].name")


def test_overlong_source_path_is_a_diagnostic(tmp_path):
    doc = _counters()
    doc["objects"]["counters"]["source"] = "x" * 300
    _expect_diagnostic(_load_doc(tmp_path, doc), tmp_path, "objects.counters.source")


def test_overlong_cgroup_path_is_a_diagnostic(tmp_path):
    doc = _counters()
    doc["attachments"][0]["cgroup"] = "x" * 300
    _expect_diagnostic(_load_doc(tmp_path, doc), tmp_path, "attachments[0].cgroup")


def test_overlong_binary_path_is_a_diagnostic(tmp_path):
    doc = _counters()
    doc["attachments"] = [{"program": "count_ingress", "type": "uprobe", "binary": "x" * 300, "symbol": "main"}]
    _expect_diagnostic(_load_doc(tmp_path, doc), tmp_path, "attachments[0].binary")


def test_unquoted_0x_that_is_not_hex_is_a_diagnostic(tmp_path):
    text = yaml.safe_dump(DOCS["connect-policy.yaml"], sort_keys=False).replace("key: 9", "key: 0xZZ")
    _expect_diagnostic(_load_doc(tmp_path, text), tmp_path, "maps.blocked_ports.entries[0].key")


def test_recursive_alias_is_a_diagnostic(tmp_path):
    path = _load_doc(tmp_path, "version: 1\nname: loop\nobjects: &a\n  o: *a\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cgroup_root=tmp_path)
    assert any("alias" in d.message for d in info.value.diagnostics), info.value.diagnostics


def test_alias_expansion_is_bounded(tmp_path):
    lines = ["version: 1", "name: laughs", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 5):  # 10**5 nodes (about 0.5 s today); each further level is 10 times slower
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    lines.append("objects: *a4")
    with pytest.raises(ManifestError) as info:
        load_manifest(_load_doc(tmp_path, "\n".join(lines) + "\n"), cgroup_root=tmp_path)
    assert any("alias" in d.message for d in info.value.diagnostics), "no diagnostic about the alias expansion"


def test_nul_byte_in_a_path_is_an_error_not_a_dropped_item(tmp_path):
    doc = copy.deepcopy(DOCS["sockmap-redirect.yaml"])
    doc["objects"]["sockops"]["source"] = "nul\x00byte.c"
    path = _load_doc(tmp_path, doc)
    try:
        manifest, _ = load_manifest(path, cgroup_root=tmp_path)
    except ManifestError as exc:
        assert any(d.path.startswith("objects.sockops") for d in exc.diagnostics), exc.diagnostics
    else:
        raise AssertionError(f"loaded with objects {[o.name for o in manifest.objects]}: 'sockops' was dropped")


def test_source_clang_takes_for_a_linker_input_is_a_build_error(tmp_path):
    """clang once took a source not named .c for a linker input and wrote nothing; it is C now."""
    from bpfdeploy.diagnostics import BuildError
    from bpfdeploy.workflow import prepare

    source = tmp_path / "counters.src"
    source.write_text((REPO / "bpf" / "cgroup-counters" / "counters.bpf.c").read_text())
    doc = _counters()
    doc["objects"]["counters"]["source"] = str(source)
    assert prepare(_load_doc(tmp_path, doc)).desired.programs  # compiled as C
    (tmp_path / "passwd.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    doc["objects"]["counters"]["source"] = str(tmp_path / "passwd.txt")
    with pytest.raises(BuildError):
        prepare(_load_doc(tmp_path, doc))


def test_apply_of_a_manifest_that_is_not_utf8_is_a_diagnostic(tmp_path):
    path = tmp_path / "manifest.yaml"
    path.write_bytes(b"version: 1\nname: \xff\xfe\nobjects: {}\n")
    env = dict(os.environ, NO_COLOR="1", TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", "apply", "--check", str(path)], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 1 and "internal error" not in proc.stderr, proc.stderr


def test_metrics_that_is_not_a_list_is_a_diagnostic(tmp_path):
    _expect_diagnostic(_load_doc(tmp_path, _counters(metrics=5)), tmp_path, "metrics")


@pytest.mark.parametrize("metric", [None, {"map": "traffic"}, {"name": "x", "map": "traffic", "labels": [None]},
                                    {"name": "x", "map": "traffic", "labels": [{"name": "k", "enum": "a"}]}],
                         ids=["null", "no-name", "null-label", "enum-not-a-mapping"])
def test_malformed_metric_is_a_diagnostic(tmp_path, metric):
    _expect_diagnostic(_load_doc(tmp_path, _counters(metrics=[metric])), tmp_path, "metrics[0]")
