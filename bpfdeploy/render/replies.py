"""The JSON view: every `--json` reply is one object with the same ``format_version`` key.

A reader checks ``format_version`` first; a change that would break an existing reader
(a key removed or retyped) raises it, a key added does not. The plan's own object carries
the same number (plan.PLAN_FORMAT), so `plan --json` is a reply as it is.
"""

from __future__ import annotations

import json
from typing import Any

# 2: a plan's actions carry before/after as typed fields and map entries old -> new (they were text).
FORMAT_VERSION = 2


def reply(body: dict[str, Any]) -> str:
    """The reply's text: ``format_version`` first, then the body's keys."""
    return json.dumps({"format_version": FORMAT_VERSION, **body}, indent=2)


def emit(body: dict[str, Any]) -> None:
    print(reply(body))
