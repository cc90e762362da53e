"""Read a manifest file: YAML with a line for every node, then the JSON Schema check.

Every problem is collected (not just the first) and reported with the file, the manifest
path (``attachments[1].type``) and the line the YAML parser saw it on.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from bpfdeploy.diagnostics import Diagnostic, ManifestError
from bpfdeploy.manifest.paths import format_path, line_of  # noqa: F401  (re-exported)

from bpfdeploy.manifest.paths import SCHEMA_PATH  # noqa: E402
from bpfdeploy.model.frozen import frozen


# Manifest files whose relative paths resolve against another directory than their own: a
# manifest read from standard input is copied to a temporary file, and its paths are relative to
# the directory bpfdeploy was started in (bpfdeploy/targets.py registers it).
BASE_DIRS: dict[str, Path] = {}


@frozen
class RawManifest:
    """The parsed document plus where each node came from."""

    path: Path
    data: dict
    lines: dict[tuple, int]  # manifest path (tuple of keys/indices) -> 1-based line
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def base(self) -> Path:
        """The directory relative paths in the manifest start from."""
        resolved = self.path.resolve()
        return BASE_DIRS.get(str(resolved), resolved.parent)

    def line_of(self, path: tuple) -> int | None:
        return line_of(self.lines, path)

    def diag(self, path: tuple, message: str, hint: str = "", severity: str = "error") -> Diagnostic:
        return Diagnostic(message=message, file=str(self.path), path=format_path(path),
                          line=self.line_of(path), hint=hint, severity=severity)


class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """The safe loader; nodes are turned into values by _construct, which keeps lines."""


MAX_NODES = 100_000  # a manifest is small: more nodes means an alias bomb or a generated monster


class _Budget:
    """Guards against YAML aliases that refer to themselves or multiply without end."""

    def __init__(self) -> None:
        self.active: set[int] = set()
        self.count = 0
        self.seen: set[int] = set()
        self.aliased = False  # a node was reached a second time: aliases are expanding


def _construct(node: yaml.Node, path: tuple, lines: dict, file: str, problems: list,
               budget: _Budget | None = None) -> Any:
    budget = budget or _Budget()
    budget.count += 1
    if id(node) in budget.seen:
        budget.aliased = True
    budget.seen.add(id(node))
    if budget.count > MAX_NODES:
        raise _TooBig(node.start_mark.line + 1, budget.aliased)
    if id(node) in budget.active:
        raise _Recursive(node.start_mark.line + 1)
    lines[path] = node.start_mark.line + 1
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        budget.active.add(id(node))
        try:
            return _construct_collection(node, path, lines, file, problems, budget)
        finally:
            budget.active.discard(id(node))
    if not node.style and "entries" in path and re.fullmatch(r"0[xX][0-9a-fA-F_]+", node.value):
        # YAML reads an unquoted 0x0a000001 as an integer, which an entry stores little-endian.
        problems.append(Diagnostic(f"{node.value} is read as the integer {int(node.value, 16)} and stored "
                                   "little-endian", file, format_path(path), node.start_mark.line + 1,
                                   f"quote it (\"{node.value}\") to give the bytes in this order", severity="warning"))
    return _scalar(node)


class _Recursive(Exception):
    def __init__(self, line: int):
        self.line = line


class _TooBig(Exception):
    def __init__(self, line: int, aliased: bool):
        self.line, self.aliased = line, aliased


def _construct_collection(node, path: tuple, lines: dict, file: str, problems: list, budget: _Budget) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                problems.append(Diagnostic("mapping keys must be strings", file, format_path(path), key_node.start_mark.line + 1))
                continue
            key = str(key)
            if key in out:
                problems.append(Diagnostic(f"duplicate key {key!r}", file, format_path(path + (key,)),
                                           key_node.start_mark.line + 1, hint="each key may appear once in a mapping"))
                continue
            out[key] = _construct(value_node, path + (key,), lines, file, problems, budget)
            lines[path + (key,)] = key_node.start_mark.line + 1  # point at "key:", not at its value
        return out
    return [_construct(item, path + (i,), lines, file, problems, budget) for i, item in enumerate(node.value)]


_scalar_loader = _LineLoader("")


def _scalar(node: yaml.Node) -> Any:
    """Construct one scalar with the safe loader's rules (ints, bools, nulls, strings)."""
    return _scalar_loader.construct_object(node, deep=True)


class _TooLarge(Exception):
    """A manifest over MAX_MANIFEST_BYTES (the message says so)."""


def read_manifest_text(path: Path) -> str:
    """The manifest's text, read only up to the size limit (a FIFO or /dev/zero cannot make it read on)."""
    from bpfdeploy.limits import MAX_MANIFEST_BYTES, too_big

    with open(path, "rb") as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            try:
                size = os.fstat(fh.fileno()).st_size
            except OSError:
                size = 0
            raise _TooLarge(too_big("the manifest", max(size, len(data)), MAX_MANIFEST_BYTES, setting=None))
    return data.decode()


def load_raw(path: Path) -> RawManifest:
    """Parse the YAML file; raise ManifestError for anything that is not a YAML mapping."""
    file = str(path)
    try:
        text = read_manifest_text(path)
    except FileNotFoundError:
        raise ManifestError(f"{file}: no such file", (Diagnostic("manifest file not found", file),)) from None
    except _TooLarge as exc:
        raise ManifestError(f"{file}: too big", (Diagnostic(str(exc), file, hint=(
            "a manifest describes a few objects and attachments; generate several smaller ones"
            " if you need more")),)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{file}: cannot read", (Diagnostic(f"cannot read the manifest: {exc}", file),)) from None
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{file}: invalid YAML", (Diagnostic(
            f"invalid YAML: {problem}", file, "", line, column=mark.column + 1 if mark is not None else None,
            hint=_yaml_hint(problem)),)) from None
    if node is None or not isinstance(node, yaml.MappingNode):
        line = node.start_mark.line + 1 if node is not None else 1
        raise ManifestError(f"{file}: not a mapping", (Diagnostic(
            "the manifest must be a YAML mapping with version, name and objects", file, "", line),))
    lines: dict[tuple, int] = {}
    problems: list[Diagnostic] = []
    try:
        data = _construct(node, (), lines, file, problems)
    except _Recursive as exc:
        raise ManifestError(f"{file}: invalid YAML", (Diagnostic(
            "a YAML alias refers to a node that contains it (a loop)", file, "", exc.line,
            hint="write the value out instead of using an alias"),)) from None
    except _TooBig as exc:
        message = (f"the document expands to more than {MAX_NODES} nodes through its aliases (aliases that multiply)"
                   if exc.aliased else f"the document has more than {MAX_NODES} nodes (keys, values and list "
                                       "items); a manifest is far smaller")
        raise ManifestError(f"{file}: too big", (Diagnostic(message, file, "", exc.line),)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ManifestError(f"{file}: invalid YAML", (Diagnostic(
            f"invalid YAML: {getattr(exc, 'problem', exc)}", file, "", mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None),)) from None
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ManifestError(f"{file}: invalid YAML", tuple(errors))
    return RawManifest(path=path, data=data, lines=lines, warnings=tuple(problems))


def _yaml_hint(problem: str) -> str:
    if "tab character" in problem:
        return "YAML indents with spaces only; replace the tab at that column"
    if "mapping values are not allowed" in problem:
        return "a ':' followed by a space starts a mapping: quote the value if it contains one"
    return ""


_schema_cache: dict | None = None


def load_schema() -> dict:
    global _schema_cache
    if _schema_cache is None:
        _schema_cache = json.loads(SCHEMA_PATH.read_text())
    return _schema_cache


def _validated_marker(raw: RawManifest) -> Path | None:
    """A file whose existence says: this exact document passed this exact schema before."""
    import hashlib
    import os

    from bpfdeploy.caches import cache_dir

    try:
        digest = hashlib.sha256(SCHEMA_PATH.read_bytes() + b"\0" + raw.path.read_bytes()).hexdigest()
    except OSError:
        return None
    return cache_dir() / "validated" / digest if os.environ.get("BPFDEPLOY_NO_SCHEMA_CACHE") != "1" else None


def schema_diagnostics(raw: RawManifest) -> list[Diagnostic]:
    """Every JSON Schema violation in the document, each turned into a readable diagnostic.

    jsonschema costs about 50 ms to import, most of a no-op plan: a document that passed the same
    schema before (same bytes, same schema) is not validated again.
    """
    marker = _validated_marker(raw)
    try:
        if marker is not None and marker.exists():
            return []
    except OSError:  # a cache the user cannot read (EACCES): validate in full
        marker = None
    import jsonschema

    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    out: list[Diagnostic] = []
    seen: set[tuple[str, str]] = set()
    for error in sorted(validator.iter_errors(raw.data), key=lambda e: list(map(str, e.absolute_path))):
        for diag in _explain(raw, error, schema):
            key = (diag.path, diag.message)
            if key not in seen:
                seen.add(key)
                out.append(diag)
    if not out and marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass  # no cache: validate every time
    return out


def _explain(raw: RawManifest, error, schema: dict) -> list[Diagnostic]:
    path = tuple(error.absolute_path)
    validator = error.validator
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted((error.schema.get("properties") or {}).keys())
        out = []
        for key in error.instance:
            if key in allowed:
                continue
            guess = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {guess[0]!r}?" if guess else (f"expected one of: {', '.join(allowed)}" if allowed else "")
            out.append(raw.diag(path + (key,), f"unknown field {key!r}", hint))
        return out
    if validator == "required":
        return [raw.diag(path, error.message.replace("is a required property", "is required"))]
    if validator in ("oneOf", "anyOf"):
        return [_explain_choice(raw, error, path)]
    if validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        guess = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1)
        return [raw.diag(path, f"{error.instance!r} is not allowed here; expected one of: {allowed}",
                         f"did you mean {guess[0]!r}?" if guess else "")]
    if validator == "pattern":
        desc = error.schema.get("description", "")
        return [raw.diag(path, f"{error.instance!r} does not match the expected form {error.validator_value}", desc)]
    if validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        # A string of a given form (a pattern) says in its description how to write it.
        hint = error.schema.get("description", "") if "pattern" in error.schema else ""
        return [raw.diag(path, f"expected {expected}, found {_kind(error.instance)} {error.instance!r}", hint)]
    if validator == "not" and error.validator_value == {"$ref": "#/$defs/control_characters"}:
        return [raw.diag(path, control_character_message(error.instance))]
    if validator == "const":
        return [raw.diag(path, f"expected {error.validator_value!r}, found {error.instance!r}")]
    return [raw.diag(path, error.message)]


def _explain_choice(raw: RawManifest, error, path: tuple) -> Diagnostic:
    inst = error.instance
    if isinstance(inst, dict):
        options = [s.get("required", []) for s in error.validator_value if "required" in s]
        if options and all(len(o) == 1 for o in options):
            names = [o[0] for o in options]
            present = [n for n in names if n in inst]
            if not present:
                return raw.diag(path, f"one of {', '.join(names)} is required")
            if len(present) > 1:
                return raw.diag(path, f"only one of {', '.join(present)} may be given")
    # A value that fits none of several shapes: report the most specific sub-error, or else
    # what the branch of the value's own type says (a mapping's unknown field, a missing key).
    subs = list(error.context or ())
    best = None
    for sub in subs:
        if best is None or len(sub.absolute_path) > len(best.absolute_path):
            best = sub
    if best is not None and best.validator not in ("oneOf", "anyOf") and len(best.absolute_path) > len(path):
        return _explain(raw, best, {})[0]
    same_type = [s for s in subs if s.validator not in ("type", "oneOf", "anyOf")]
    if same_type:
        return _explain(raw, same_type[0], {})[0]
    return raw.diag(path, f"{_kind(inst)} {inst!r} does not fit here", error.schema.get("description", ""))


def control_character_message(text: str) -> str:
    """What the schema and the checks both say about a name or path holding a control character."""
    bad = next(c for c in text if ord(c) < 0x20 or ord(c) == 0x7F)
    return (f"{text[:60]!r} holds the control character U+{ord(bad):04X}: names and paths may not contain "
            "control characters (newline, tab, NUL, ...)")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if value is None:
        return "null"
    return type(value).__name__
