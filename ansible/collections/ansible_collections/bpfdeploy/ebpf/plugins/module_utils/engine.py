# -*- coding: utf-8 -*-
# Copyright: bpfdeploy contributors
# Apache License 2.0 (see LICENSE in the bpfdeploy repository)
"""The modules' only door into the bpfdeploy library on the target.

Everything the modules ask of bpfdeploy goes through here: importing it (with a clear
error naming the host when it is missing), pointing it at per-host state and cache
directories, and the plan / apply / destroy / status / probe steps, in the order the CLI
uses them (prepare -> gate -> live state -> plan -> apply). Nothing shells out to the CLI.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket
import sys


def relabel(fields, release_dir, manifest_rel, manifest):
    """Name the manifest's files as the operator knows them (the controller path), not as the
    release copy on the host: /var/lib/bpfdeploy/ansible/releases/<digest>/files/x.yaml -> x.yaml."""
    import json

    if not (release_dir and manifest and manifest.endswith(manifest_rel)):
        return fields
    root = manifest[:len(manifest) - len(manifest_rel)].rstrip("/")
    text = json.dumps(fields).replace(json.dumps(os.path.join(release_dir, "files"))[1:-1], root)
    return json.loads(text)


class MissingLibrary(Exception):
    pass


def import_bpfdeploy():
    """Import bpfdeploy or raise MissingLibrary with a message that names this host."""
    try:
        import bpfdeploy  # noqa: F401
        from bpfdeploy import workflow  # noqa: F401
    except ImportError as exc:
        raise MissingLibrary(
            "bpfdeploy is not installed for the Python that runs this module on host %s (%s: %s). "
            "Install it with the role bpfdeploy.ebpf.install, or set ansible_python_interpreter to "
            "the python of a virtual environment that has bpfdeploy"
            % (socket.gethostname(), sys.executable, exc))


def use_directories(state_dir=None, cache_dir=None):
    """Per-host state and cache directories (hosts that share one file system need them)."""
    if state_dir:
        os.environ["BPFDEPLOY_STATE_DIR"] = state_dir
    if cache_dir:
        os.environ["BPFDEPLOY_CACHE_DIR"] = cache_dir
    from bpfdeploy.record import state_dir as current_state_dir

    return str(current_state_dir())


def error_result(exc):
    """A bpfdeploy error as module result fields (message plus every diagnostic)."""
    from bpfdeploy.diagnostics import ApplyError

    out = {"msg": exc.message, "diagnostics": [d.to_json() for d in exc.diagnostics]}
    if exc.diagnostics:
        out["msg"] = exc.message + ": " + "; ".join(d.format().replace("\n", " ") for d in exc.diagnostics)
    detail = getattr(exc, "detail", "") or getattr(exc, "log", "")
    if detail:
        out["detail"] = detail
    if isinstance(exc, ApplyError):
        out.update(failed_step=exc.step, rolled_back=not exc.rollback, rollback_failures=list(exc.rollback))
    return out


def prepare(manifest, destroy=False, artifacts=None, allowed_signers=None):
    from pathlib import Path

    from bpfdeploy import workflow

    workflow.require_root()
    if destroy:
        return workflow.prepare(Path(manifest), None, destroy=True)
    return workflow.prepare(Path(manifest), None, artifacts=Path(artifacts) if artifacts else None,
                            allowed_signers=Path(allowed_signers) if allowed_signers else None)


def gate(prepared, manifest, refresh=False):
    """(features, diagnostics): can this host run the manifest? Nothing is changed."""
    from pathlib import Path

    from bpfdeploy import workflow

    return workflow.gate(prepared, Path(manifest), refresh=refresh)


def plan(manifest, destroy=False, prepared=None, artifacts=None, allowed_signers=None):
    """workflow.Planned: gate, live state and plan. Raises ManifestError when the host does not fit."""
    from pathlib import Path

    from bpfdeploy import workflow

    prepared = prepared or prepare(manifest, destroy=destroy, artifacts=artifacts, allowed_signers=allowed_signers)
    return workflow.plan_prepared(prepared, Path(manifest), destroy=destroy)


def apply(manifest, destroy=False, lock_timeout=60, on_plan=None, artifacts=None, allowed_signers=None):
    """workflow.Applied: lock, plan again under the lock, on_plan (may raise to stop), apply.

    Raises ApplyError after bpfdeploy rolled the kernel back."""
    from pathlib import Path

    from bpfdeploy import workflow

    return workflow.apply_deployment(Path(manifest), destroy=destroy, lock_timeout=lock_timeout, on_plan=on_plan,
                                     artifacts=Path(artifacts) if artifacts else None,
                                     allowed_signers=Path(allowed_signers) if allowed_signers else None)


def status(prepared, manifest):
    """The deployment's status read afresh from the kernel, as `bpfdeploy status --json` has it."""
    from pathlib import Path

    from bpfdeploy import workflow

    return workflow.status_of(prepared, Path(manifest)).to_json()


def summary(applied):
    """The JSON body `bpfdeploy apply --json` prints (plan, done, warnings, mutations, commands)."""
    from bpfdeploy import workflow

    return workflow.summary(applied)


def probe_summary(features):
    if features is None:
        return None
    return {"kernel": features.kernel_release, "btf": features.btf, "from_cache": features.from_cache,
            "probed_at": features.probed_at, "bpftool": features.versions.bpftool,
            "libbpf": features.versions.libbpf, "clang": features.versions.clang,
            "program_types": len(features.program_types)}


def features_facts(refresh=False):
    from bpfdeploy.probe import features_json, probe_features

    return features_json(probe_features(None, refresh=refresh))


def state_view(planned):
    """(before, after) of programs, maps and attachments, with build digests, for diff mode."""
    from bpfdeploy.plan import Kind, Resource

    live, desired, record = planned.live, planned.prepared.desired, planned.live.record
    before = {"programs": {}, "maps": {}, "attachments": {}}
    for pin, prog in sorted(live.programs.items()):
        digest = record.digest_of(prog.id) if record else None
        before["programs"][os.path.basename(pin)] = {"type": prog.type, "build": (digest or "unknown")[:12]}
    for pin, m in sorted(live.maps.items()):
        before["maps"][os.path.basename(pin)] = {"geometry": m.geometry.describe()}
    for action in planned.plan.actions:
        if action.resource is Resource.ATTACHMENT and action.kind is not Kind.CREATE:
            name = action.address.split("/", 1)[1]
            if action.kind is Kind.DELETE or action.desired is None:
                before["attachments"][name] = {"program": None, "hook": action.before.text if action.before else None}
            else:  # in place, or updated to the replaced program: the programs' builds show what changes
                before["attachments"][name] = {"program": action.desired.program, "hook": action.desired.hook_text()}
    after = {"programs": {}, "maps": {}, "attachments": {}}
    for p in desired.programs:  # empty for a destroy
        after["programs"][p.pin_name] = {"type": p.prog_type, "build": p.digest[:12]}
    for m in desired.maps:
        after["maps"][m.name] = {"geometry": m.geometry.describe()}
    for a in desired.attachments:
        after["attachments"][a.name] = {"program": a.program, "hook": a.hook_text()}
    return before, after
