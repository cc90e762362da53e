# -*- coding: utf-8 -*-
# Copyright: bpfdeploy contributors
# Apache License 2.0 (see LICENSE in the bpfdeploy repository)
"""Controller side of the modules: collect a controller-side manifest (and artifacts) into the
task's arguments, so they travel with the module in one transfer (no extra SFTP round trips)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase
from ansible_collections.bpfdeploy.ebpf.plugins.module_utils.bundle import BundleError, collect


class ShippingAction(ActionBase):
    """Runs the module of the same name with ``_bundle`` filled in from the controller."""

    TRANSFERS_FILES = False
    _requires_connection = True

    def _controller_path(self, path):
        try:
            return self._find_needle("files", path)
        except Exception as exc:  # AnsibleError with the search path in its message
            raise AnsibleActionFail("%s not found on the controller: %s" % (path, to_native(exc)))

    def run(self, tmp=None, task_vars=None):
        result = super(ShippingAction, self).run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get("manifest") and not args.get("remote_src"):
            manifest = self._controller_path(args["manifest"])
            artifacts = self._controller_path(args["artifacts"]) if args.get("artifacts") else None
            try:
                args["_bundle"] = collect(manifest, artifacts)
            except BundleError as exc:
                raise AnsibleActionFail(to_native(exc))
            if args.get("allowed_signers"):
                with open(self._controller_path(args["allowed_signers"]), "rb") as fh:
                    import base64

                    args["_bundle"]["allowed_signers"] = base64.b64encode(fh.read()).decode("ascii")
                args.pop("allowed_signers")
            args.pop("artifacts", None)
        result.update(self._execute_module(module_name=self._task.resolved_action or self._task.action,
                                           module_args=args, task_vars=task_vars))
        return result
