#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: bpfdeploy contributors
# Apache License 2.0 (see LICENSE in the bpfdeploy repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: probe
short_description: BPF features of a host, and whether it can run a bpfdeploy manifest
version_added: "0.1.0"
description:
  - Returns the host's BPF features as facts (kernel, BTF, tool versions, program, map and
    attach types), as C(bpfdeploy probe features --json) reports them. The probe is cached per
    boot in bpfdeploy's cache directory.
  - With O(check=manifest), also checks that the host can run O(manifest) (what it declares in
    C(requires) and what it implies - program, map and attach types, clang for sources) and fails
    the host when it cannot, naming every missing thing. Nothing is changed on the host, so a
    play can gate every host before any host changes.
author:
  - bpfdeploy contributors (@bpfdeploy)
requirements:
  - bpfdeploy installed for the target's C(ansible_python_interpreter).
options:
  check:
    description:
      - V(none) only gathers facts; V(manifest) also fails the host if it cannot run O(manifest).
    type: str
    choices: [none, manifest]
    default: none
  manifest:
    description:
      - The manifest to check (on the controller; shipped with the task like
        M(bpfdeploy.ebpf.deployment) does it, or on the target with O(remote_src=true)).
    type: path
  remote_src:
    description:
      - O(manifest) is already on the target.
    type: bool
    default: false
  artifacts:
    description:
      - Artifacts (C(bpfdeploy build --out)) the deployment will use, so sources need no clang here.
    type: path
  allowed_signers:
    description:
      - An ssh-keygen allowed_signers file the O(artifacts) signature must verify against.
    type: path
  refresh:
    description:
      - Probe again even when this boot's probe is cached.
    type: bool
    default: false
  state_dir:
    description:
      - bpfdeploy's state directory on the target.
    type: path
  cache_dir:
    description:
      - bpfdeploy's build and probe cache on the target.
    type: path
attributes:
  check_mode:
    support: full
    description: The module changes nothing in any mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  platform:
    support: full
    platforms: posix
    description: Linux with BPF, bpffs and cgroup v2.
notes:
  - Sets the fact C(bpfdeploy_features).
seealso:
  - module: bpfdeploy.ebpf.deployment
"""

EXAMPLES = r"""
- name: Gate every host before any host changes
  bpfdeploy.ebpf.probe:
    check: manifest
    manifest: manifests/cgroup-counters.yaml

- name: Facts only
  bpfdeploy.ebpf.probe:
  register: bpf
- ansible.builtin.debug:
    msg: "{{ ansible_facts.bpfdeploy_features.kernel }}"
"""

RETURN = r"""
ansible_facts:
  description: C(bpfdeploy_features), the probe as C(bpfdeploy probe features --json) prints it.
  returned: always
  type: dict
  contains:
    bpfdeploy_features:
      description: kernel, versions, btf, program_types, map_types, helpers, mounts, sysctls and notes.
      type: dict
      returned: always
fits:
  description: With O(check=manifest), whether the host can run the manifest.
  returned: check=manifest
  type: bool
deployment:
  description: With O(check=manifest), the manifest's deployment name.
  returned: check=manifest and it could be read
  type: str
diagnostics:
  description: Every problem found (file, manifest path, line, message, hint), warnings included.
  returned: check=manifest
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.bpfdeploy.ebpf.plugins.module_utils import bundle as bundle_utils
from ansible_collections.bpfdeploy.ebpf.plugins.module_utils import engine
from ansible_collections.bpfdeploy.ebpf.plugins.module_utils import release as release_utils


SIGNERS = ".allowed_signers"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            check=dict(type="str", choices=["none", "manifest"], default="none"),
            manifest=dict(type="path"),
            remote_src=dict(type="bool", default=False),
            artifacts=dict(type="path"),
            allowed_signers=dict(type="path"),
            refresh=dict(type="bool", default=False),
            state_dir=dict(type="path"),
            cache_dir=dict(type="path"),
            _bundle=dict(type="raw"),
        ),
        required_if=[("check", "manifest", ("manifest",))],
        supports_check_mode=True,
    )
    p = module.params
    try:
        engine.import_bpfdeploy()
    except engine.MissingLibrary as exc:
        module.fail_json(msg=str(exc), missing_library=True)
    from bpfdeploy.diagnostics import BpfdeployError

    engine.use_directories(p["state_dir"], p["cache_dir"])
    try:
        facts = {"bpfdeploy_features": engine.features_facts(refresh=p["refresh"])}
    except BpfdeployError as exc:
        module.fail_json(**engine.error_result(exc))
    if p["check"] == "none":
        module.exit_json(changed=False, ansible_facts=facts)

    try:
        if p["_bundle"]:
            manifest_rel, files, artifacts = bundle_utils.decode(p["_bundle"])
        else:
            manifest_rel, files, artifacts = bundle_utils.collect_raw(p["manifest"], p["artifacts"])
    except bundle_utils.BundleError as exc:
        module.fail_json(msg=str(exc), ansible_facts=facts)
    signers = None
    if p["_bundle"] and p["_bundle"].get("allowed_signers"):
        import base64

        files[SIGNERS] = base64.b64decode(p["_bundle"]["allowed_signers"])
    elif p["allowed_signers"]:
        with open(p["allowed_signers"], "rb") as fh:
            files[SIGNERS] = fh.read()
    rel = release_utils.temporary(manifest_rel, files, artifacts, bundle_utils.digest(files, artifacts))

    def relabel(fields):
        return fields if p["remote_src"] else engine.relabel(fields, rel.directory, manifest_rel, p["manifest"])

    if SIGNERS in files:
        signers = os.path.join(rel.directory, "files", SIGNERS)
    try:
        try:
            prepared = engine.prepare(rel.manifest, artifacts=rel.artifacts, allowed_signers=signers)
            _features, diags = engine.gate(prepared, rel.manifest, refresh=False)
        except BpfdeployError as exc:  # it cannot even be built or resolved here (no clang, bad object)
            fields = engine.error_result(exc)
            fields["msg"] = "host cannot run %s: %s" % (p["manifest"], fields["msg"])
            module.fail_json(fits=False, ansible_facts=facts, **relabel(fields))
        errors = [d for d in diags if d.severity == "error"]
        out = dict(changed=False, ansible_facts=facts, fits=not errors, deployment=prepared.desired.name,
                   diagnostics=[d.to_json() for d in diags])
        if errors:
            out["msg"] = "host cannot run %s: %s" % (
                p["manifest"], "; ".join(d.format().replace("\n", " ") for d in errors))
            module.fail_json(**relabel(out))
        module.exit_json(**relabel(out))
    finally:
        import shutil

        shutil.rmtree(rel.directory, ignore_errors=True)


if __name__ == "__main__":
    main()
