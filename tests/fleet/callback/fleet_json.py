"""A stdout callback for the fleet tests: the whole run as one JSON document at the end.

{"plays": [{"play": {"name"}, "tasks": [{"task": {"name"}, "hosts": {host: result}}]}], "stats": {host: {...}}}
One entry in "plays" per play run, so each batch of a `serial` play is its own entry, in order.
(ansible.posix.json does the same, but it is not part of ansible-core.)
"""

from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: fleet_json
type: stdout
short_description: the run as one JSON document (fleet tests)
description: [Collects task results per host and prints them as JSON when the run ends.]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "fleet_json"

    def __init__(self):
        super().__init__()
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def _task(self, task):
        tasks = self.plays[-1]["tasks"]
        if not tasks or tasks[-1]["_uuid"] != task._uuid:
            tasks.append({"task": {"name": task.get_name()}, "hosts": {}, "_uuid": task._uuid})
        return tasks[-1]

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task(task)

    def _record(self, result, **extra):
        entry = self._task(result._task)
        data = dict(result._result)
        data.update(extra)
        entry["hosts"][result._host.get_name()] = data

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        out = {"plays": self.plays, "stats": {h: stats.summarize(h) for h in sorted(stats.processed)}}
        for play in self.plays:
            for task in play["tasks"]:
                task.pop("_uuid", None)
        self._display.display(json.dumps(out, default=str))
