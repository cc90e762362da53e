"""Check a --json reply against its JSON Schema under schemas/replies/ (the contract for wrappers)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

REPLIES = Path(__file__).resolve().parents[1] / "schemas" / "replies"


@lru_cache(maxsize=1)
def _registry():
    from referencing import Registry, Resource

    resources = []
    for path in sorted(REPLIES.glob("*.schema.json")):
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


def check_reply(name: str, reply: dict) -> None:
    """Raise AssertionError listing every way `reply` departs from schemas/replies/<name>.schema.json."""
    from jsonschema import Draft202012Validator

    schema = json.loads((REPLIES / f"{name}.schema.json").read_text())
    validator = Draft202012Validator(schema, registry=_registry())
    errors = sorted(validator.iter_errors(reply), key=lambda e: list(e.absolute_path))
    assert not errors, f"{name} reply does not match its schema:\n" + "\n".join(
        f"  at {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:20])
