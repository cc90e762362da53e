#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: bpfdeploy contributors
# Apache License 2.0 (see LICENSE in the bpfdeploy repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: deployment
short_description: Deploy eBPF programs on a host from a bpfdeploy manifest
version_added: "0.1.0"
description:
  - Makes the host's kernel match a bpfdeploy manifest (programs, maps, pins and attachments),
    idempotently, through the bpfdeploy library on the target. A failed apply is rolled back
    by bpfdeploy, so the host is left as it was.
  - The manifest and every file it names (sources, prebuilt objects, include directories,
    uprobe binaries given by relative path) are shipped from the controller with the task
    (an action plugin collects them), unless O(remote_src=true).
  - Each successful apply keeps its release (the shipped files) on the host, with the release it
    replaced, so that O(rollback=true) can go back to the previous release.
  - Check mode is the plan - C(changed) says whether an apply would change anything, and no
    mutating call is made on the target. Diff mode shows programs, maps and attachments before
    and after, with build digests.
author:
  - bpfdeploy contributors (@bpfdeploy)
requirements:
  - bpfdeploy installed for the target's C(ansible_python_interpreter) (role P(bpfdeploy.ebpf.install#role)).
  - root on the target (CAP_BPF and CAP_SYS_ADMIN), bpftool and libbpf; clang when the manifest builds from source.
options:
  manifest:
    description:
      - Path of the bpfdeploy manifest. On the controller (relative paths are looked up like
        C(copy) sources), or on the target with O(remote_src=true).
      - Required unless O(name) is given with O(state=absent) or O(rollback=true).
    type: path
  remote_src:
    description:
      - The manifest (and O(artifacts)) are already on the target; nothing is shipped.
    type: bool
    default: false
  name:
    description:
      - The deployment's name. Needed only when no O(manifest) is given, for O(state=absent) or
        O(rollback=true); the release kept on the host is used then.
    type: str
  state:
    description:
      - V(present) deploys the manifest, V(absent) removes everything the deployment owns.
    type: str
    choices: [present, absent]
    default: present
  rollback:
    description:
      - Deploy the previous release kept on the host instead of O(manifest) (after an apply or
        post-check failed). Fails when the host keeps no previous release.
    type: bool
    default: false
  pin_root:
    description:
      - Override the manifest's C(pin_root) (a directory below C(/sys/fs/bpf)). The release's copy
        of the manifest gets the new C(pin_root) line; every other line keeps its number.
      - Cannot be combined with O(artifacts) (their index records the manifest's exact bytes).
    type: path
  allow_map_recreate:
    description:
      - Allow a plan that recreates a pinned map (its definition changed and the manifest says
        C(on_incompatible_change=recreate)); its contents are lost. Without it such a plan fails
        before any change.
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for another apply or destroy of the same deployment on the host.
    type: float
    default: 60
  artifacts:
    description:
      - A directory made by C(bpfdeploy build --out) holding prebuilt, digest-checked (and
        possibly signed) objects, so the target needs no clang. Shipped like O(manifest).
    type: path
  allowed_signers:
    description:
      - An ssh-keygen allowed_signers file (on the controller, or on the target with
        O(remote_src=true)) the artifacts' signature must verify against.
    type: path
  state_dir:
    description:
      - bpfdeploy's state directory on the target (deployment records, locks and kept releases).
        Default C(/var/lib/bpfdeploy). Hosts that share a file system need one each.
    type: path
  cache_dir:
    description:
      - bpfdeploy's build and probe cache on the target. Default C(/var/cache/bpfdeploy).
    type: path
attributes:
  check_mode:
    support: full
    description: The plan is computed against the live kernel; no mutating call is made and nothing is kept.
  diff_mode:
    support: full
    description: Programs (type, build digest), maps (geometry) and attachments (program, hook) before and after.
  platform:
    support: full
    platforms: posix
    description: Linux with BPF (kernel 5.x or newer), bpffs and cgroup v2.
notes:
  - Ids of BPF objects are kernel-wide; the module finds its own objects through their pins and the
    deployment record only.
  - The module keeps at most two releases per deployment on the host (current and previous).
seealso:
  - module: bpfdeploy.ebpf.probe
"""

EXAMPLES = r"""
- name: Deploy the counters (sources built on the host)
  bpfdeploy.ebpf.deployment:
    manifest: manifests/cgroup-counters.yaml

- name: Deploy prebuilt, signed artifacts on hosts without clang
  bpfdeploy.ebpf.deployment:
    manifest: manifests/cgroup-counters.yaml
    artifacts: build/artifacts
    allowed_signers: keys/allowed_signers

- name: Go back to the release that was deployed before
  bpfdeploy.ebpf.deployment:
    manifest: manifests/cgroup-counters.yaml
    rollback: true

- name: Remove the deployment
  bpfdeploy.ebpf.deployment:
    name: cgroup-counters
    state: absent
"""

RETURN = r"""
changed:
  description: Whether the kernel was (check mode - would be) changed, or a new release was kept.
  returned: always
  type: bool
deployment:
  description: The deployment's name.
  returned: success
  type: str
  sample: cgroup-counters
plan:
  description: The plan, exactly as C(bpfdeploy plan --json) prints it (with C(format_version)).
  returned: success, and on failures after planning
  type: dict
  sample: {"format_version": 2, "deployment": "cgroup-counters", "changes": true, "summary": {"create": 5}}
actions:
  description: The steps carried out, in order (empty in check mode and when nothing changed).
  returned: success
  type: list
  elements: str
  sample: ["create map/traffic", "create prog/count_ingress"]
mutations:
  description: Number of kernel-changing calls made (0 in check mode).
  returned: success
  type: int
warnings_apply:
  description: Warnings bpfdeploy reported while applying.
  returned: success
  type: list
  elements: str
probe:
  description: Summary of the host's BPF features the plan was checked against.
  returned: success, state=present
  type: dict
  sample: {"kernel": "6.18.44", "btf": true, "bpftool": "7.1.0", "clang": "14.0.6"}
status:
  description: The deployment's status after the run (as C(bpfdeploy status --json)); C(healthy) is true when in sync.
  returned: success, state=present
  type: dict
release:
  description: The releases kept on the host for this deployment (digests), and the one used by this run.
  returned: success
  type: dict
  sample: {"used": "3b1f...", "current": "3b1f...", "previous": "9ac0..."}
partial:
  description: The apply finished but an attachment marked C(optional) could not be made (see RV(skipped)).
  returned: success, state=present
  type: bool
skipped:
  description: Optional attachments left out, each with the reason.
  returned: success, state=present
  type: list
  elements: dict
rolled_back:
  description: On a failed apply, whether bpfdeploy rolled the kernel back completely.
  returned: failure during apply
  type: bool
diagnostics:
  description: Every problem found (file, manifest path, line, message, hint).
  returned: failure
  type: list
  elements: dict
failed_step:
  description: The plan step that failed.
  returned: failure during apply
  type: str
rollback_failures:
  description: Undo steps that failed (empty when C(rolled_back) is true).
  returned: failure during apply
  type: list
  elements: str
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.bpfdeploy.ebpf.plugins.module_utils import bundle as bundle_utils
from ansible_collections.bpfdeploy.ebpf.plugins.module_utils import engine
from ansible_collections.bpfdeploy.ebpf.plugins.module_utils import release as release_utils


SIGNERS = ".allowed_signers"  # where a release keeps the allowed_signers file it was shipped with


def _argument_spec():
    return dict(
        manifest=dict(type="path"),
        remote_src=dict(type="bool", default=False),
        name=dict(type="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        rollback=dict(type="bool", default=False),
        pin_root=dict(type="path"),
        allow_map_recreate=dict(type="bool", default=False),
        lock_timeout=dict(type="float", default=60),
        artifacts=dict(type="path"),
        allowed_signers=dict(type="path"),
        state_dir=dict(type="path"),
        cache_dir=dict(type="path"),
        _bundle=dict(type="raw"),
    )


class Run:
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.store = None
        self.release = None  # the release this run uses, for naming its files in messages

    def fail(self, **fields):
        if self.release is not None and not self.p["remote_src"]:
            fields = engine.relabel(fields, self.release.directory, self.release.manifest_rel, self.p["manifest"])
        self.module.fail_json(changed=False, **fields)

    # -- which release
    def incoming(self):
        """(manifest relpath, files, artifacts) of the release the task asks for, or None."""
        p = self.p
        try:
            if p["_bundle"]:
                manifest_rel, files, artifacts = bundle_utils.decode(p["_bundle"])
            elif p["manifest"] and p["remote_src"]:
                manifest_rel, files, artifacts = bundle_utils.collect_raw(p["manifest"], p["artifacts"])
            elif p["manifest"]:
                self.fail(msg="manifest %s was not shipped: run the module through its action plugin "
                              "(bpfdeploy.ebpf.deployment), or set remote_src: true" % p["manifest"])
            else:
                return None
        except bundle_utils.BundleError as exc:
            self.fail(msg=str(exc))
        if p["_bundle"] and p["_bundle"].get("allowed_signers"):
            import base64

            files[SIGNERS] = base64.b64decode(p["_bundle"]["allowed_signers"])
        elif p["allowed_signers"]:
            with open(p["allowed_signers"], "rb") as fh:  # remote_src: read on the target
                files[SIGNERS] = fh.read()
        if p["pin_root"]:
            files[manifest_rel] = bundle_utils.with_pin_root(files[manifest_rel], p["pin_root"])
        return manifest_rel, files, artifacts

    @staticmethod
    def name_in(incoming):
        """The deployment name written in the shipped manifest (bpfdeploy checks it properly later)."""
        import yaml

        manifest_rel, files, _artifacts = incoming
        try:
            data = yaml.safe_load(files[manifest_rel])
        except yaml.YAMLError:
            return None
        return data.get("name") if isinstance(data, dict) and isinstance(data.get("name"), str) else None

    def run(self):
        try:
            engine.import_bpfdeploy()
        except engine.MissingLibrary as exc:
            self.fail(msg=str(exc), missing_library=True)
        from bpfdeploy.diagnostics import BpfdeployError

        state_dir = engine.use_directories(self.p["state_dir"], self.p["cache_dir"])
        self.store = release_utils.Store(state_dir)
        try:
            if self.p["state"] == "absent":
                return self.absent()
            return self.present()
        except BpfdeployError as exc:
            self.fail(**engine.error_result(exc))

    # -- state: present
    def present(self):
        p, check = self.p, self.module.check_mode
        incoming = self.incoming()
        if p["rollback"]:
            name = p["name"] or (self.name_in(incoming) if incoming else None)
            if not name:
                self.fail(msg="rollback needs the deployment's name or its manifest")
            rel = self.store.previous(name)
            if rel is None:
                self.fail(msg="host keeps no previous release of deployment %s to roll back to" % name)
        elif incoming is None:
            self.fail(msg="state=present needs a manifest")
        else:
            manifest_rel, files, artifacts = incoming
            digest = bundle_utils.digest(files, artifacts)
            if check:
                rel = release_utils.temporary(manifest_rel, files, artifacts, digest)
            else:
                rel = self.store.materialize(manifest_rel, files, artifacts, digest)
        try:
            return self._present(rel)
        finally:
            if check and not p["rollback"]:
                import shutil

                shutil.rmtree(rel.directory, ignore_errors=True)

    @staticmethod
    def _temp_release(incoming):
        manifest_rel, files, artifacts = incoming
        return release_utils.temporary(manifest_rel, files, artifacts, bundle_utils.digest(files, artifacts))

    def _present(self, rel):
        p, check = self.p, self.module.check_mode
        if not p["rollback"]:
            self.release = rel
        signers = self._signers(rel)
        planned = engine.plan(rel.manifest, artifacts=rel.artifacts, allowed_signers=signers)
        name = planned.prepared.desired.name
        self._check_map_recreate(planned)
        pointers = self.store.pointers(name)
        new_release = not p["rollback"] and pointers["current"] != rel.digest
        result = dict(deployment=name, plan=planned.plan.to_json(), probe=engine.probe_summary(planned.features),
                      actions=[], mutations=0, warnings_apply=[])
        if self.module._diff:
            before, after = engine.state_view(planned)
            result["diff"] = dict(before=before, after=after, before_header="%s (live)" % name,
                                  after_header="%s (%s)" % (name, "previous release" if p["rollback"] else "manifest"))
        if planned.plan.errors:
            self.fail(msg="the plan of %s has errors; nothing was changed: %s" % (
                name, "; ".join(d.format().replace("\n", " ") for d in planned.plan.errors)),
                diagnostics=[d.to_json() for d in planned.plan.errors], plan=result["plan"])
        if check:
            result["status"] = engine.status(planned.prepared, rel.manifest)
            result["release"] = dict(used=rel.digest, **pointers)
            self.module.exit_json(changed=bool(planned.plan.changes) or new_release, **result)
        from bpfdeploy.diagnostics import ApplyError

        try:
            # Planned again under the deployment's lock; the map guard runs before any change.
            applied = engine.apply(rel.manifest, lock_timeout=p["lock_timeout"], on_plan=self._check_map_recreate,
                                   artifacts=rel.artifacts, allowed_signers=signers)
        except ApplyError as exc:
            fields = engine.error_result(exc)
            fields["msg"] = "apply of %s failed: %s" % (name, fields["msg"])
            self.fail(plan=result["plan"], release=dict(used=rel.digest, **pointers), **fields)
        body = engine.summary(applied)
        result.update(plan=body["plan"], actions=body.get("done", []), mutations=body.get("mutations", 0),
                      warnings_apply=body.get("warnings", []), partial=body.get("partial", False),
                      skipped=body.get("skipped", []))
        if applied.planned.plan.errors:
            self.fail(msg="the plan of %s has errors; nothing was changed" % name,
                      diagnostics=[d.to_json() for d in applied.planned.plan.errors], plan=body["plan"])
        pointers = self.store.rolled_back(name) if p["rollback"] else self.store.promote(name, rel.digest)
        result["status"] = engine.status(applied.planned.prepared, rel.manifest)
        result["release"] = dict(used=rel.digest, **pointers)
        self.module.exit_json(changed=applied.changed or new_release, **result)

    def _signers(self, rel):
        path = os.path.join(rel.directory, "files", SIGNERS)
        return path if os.path.isfile(path) else None

    def _check_map_recreate(self, planned):
        if self.p["allow_map_recreate"]:
            return
        from bpfdeploy.diagnostics import BpfdeployError
        from bpfdeploy.plan import Kind, Resource

        recreated = [a.address for a in planned.plan.actions if a.resource is Resource.MAP and a.kind is Kind.REPLACE]
        if recreated:
            raise BpfdeployError("the plan recreates %s, which drops their contents; set allow_map_recreate: true "
                                 "to allow it. Nothing was changed" % ", ".join(recreated))

    # -- state: absent
    def absent(self):
        p, check = self.p, self.module.check_mode
        incoming = self.incoming()
        rel = None
        if incoming is not None:
            rel = self._temp_release(incoming)
            manifest = rel.manifest
        elif p["name"]:
            kept = self.store.current(p["name"])
            if kept is None:
                # Nothing kept here: the deployment was never applied through this module on this host.
                self.module.exit_json(changed=False, deployment=p["name"], actions=[], mutations=0,
                                      msg="no release of %s is kept on this host" % p["name"])
            manifest = kept.manifest
        else:
            self.fail(msg="state=absent needs the deployment's name or its manifest")
        try:
            planned = engine.plan(manifest, destroy=True)
            name = planned.prepared.desired.name
            result = dict(deployment=name, plan=planned.plan.to_json(), actions=[], mutations=0, warnings_apply=[])
            if self.module._diff:
                before, after = engine.state_view(planned)
                result["diff"] = dict(before=before, after=after)
            if check:
                self.module.exit_json(changed=bool(planned.plan.changes), **result)
            from bpfdeploy.diagnostics import ApplyError

            try:
                applied = engine.apply(manifest, destroy=True, lock_timeout=p["lock_timeout"])
            except ApplyError as exc:
                fields = engine.error_result(exc)
                fields["msg"] = "destroy of %s failed: %s" % (name, fields["msg"])
                self.fail(plan=result["plan"], **fields)
            self.store.forget(name)
            body = engine.summary(applied)
            result.update(plan=body["plan"], actions=body.get("done", []), mutations=body.get("mutations", 0),
                          warnings_apply=body.get("warnings", []))
            self.module.exit_json(changed=applied.changed, **result)
        finally:
            if rel is not None:
                import shutil

                shutil.rmtree(rel.directory, ignore_errors=True)


def main():
    module = AnsibleModule(argument_spec=_argument_spec(), supports_check_mode=True,
                           mutually_exclusive=[("rollback", "pin_root"), ("artifacts", "pin_root")])
    try:
        Run(module).run()
    except Exception as exc:  # a crash: the message and the traceback, never a half-reported state
        module.fail_json(msg="bpfdeploy.ebpf.deployment crashed on this host: %r" % (exc,),
                         exception=traceback.format_exc())


if __name__ == "__main__":
    main()
