# -*- coding: utf-8 -*-
# Copyright: bpfdeploy contributors
# Apache License 2.0 (see LICENSE in the bpfdeploy repository)
"""The releases a host keeps, so a playbook can roll a deployment back to the previous one.

Layout, under ``<state_dir>/ansible`` (state_dir: the bpfdeploy state directory)::

    releases/<digest>/files/...       the manifest and its files, as shipped (never changed)
    releases/<digest>/artifacts/...   the artifacts shipped with it, if any
    deployments/<name>.json           {"current": digest, "previous": digest or null}

A release becomes ``current`` only after its apply succeeded; the one it replaced becomes
``previous``. A rollback applies ``previous`` and makes it ``current`` again; the release
rolled back from is forgotten (``last_failed`` names it). Releases no pointer names are
removed, so a host keeps at most two per deployment.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import tempfile


class Release:
    def __init__(self, directory, manifest_rel, digest):
        self.directory = directory
        self.manifest_rel = manifest_rel
        self.digest = digest

    @property
    def manifest(self):
        return os.path.join(self.directory, "files", self.manifest_rel)

    @property
    def artifacts(self):
        path = os.path.join(self.directory, "artifacts")
        return path if os.path.isdir(path) else None


def _write_tree(directory, manifest_rel, files, artifacts, digest):
    for group, items in (("files", files), ("artifacts", artifacts)):
        for name, content in items.items():
            path = os.path.join(directory, group, name)
            if not os.path.isdir(os.path.dirname(path)):
                os.makedirs(os.path.dirname(path))
            with open(path, "wb") as fh:
                fh.write(content)
    with open(os.path.join(directory, "release.json"), "w") as fh:
        json.dump({"manifest": manifest_rel, "digest": digest}, fh)


def temporary(manifest_rel, files, artifacts, digest):
    """A release written to a temporary directory (check mode keeps nothing on the host)."""
    directory = tempfile.mkdtemp(prefix="bpfdeploy-release-")
    _write_tree(directory, manifest_rel, files, artifacts, digest)
    return Release(directory, manifest_rel, digest)


class Store:
    def __init__(self, state_dir):
        self.root = os.path.join(state_dir, "ansible")

    def _release_dir(self, digest):
        return os.path.join(self.root, "releases", digest)

    def _pointer_path(self, name):
        return os.path.join(self.root, "deployments", name + ".json")

    def materialize(self, manifest_rel, files, artifacts, digest):
        """The release on disk (written once, atomically: a directory renamed into place)."""
        final = self._release_dir(digest)
        if not os.path.isfile(os.path.join(final, "release.json")):
            parent = os.path.dirname(final)
            if not os.path.isdir(parent):
                os.makedirs(parent)
            tmp = tempfile.mkdtemp(prefix=".incoming-", dir=parent)
            _write_tree(tmp, manifest_rel, files, artifacts, digest)
            if os.path.isdir(final):
                shutil.rmtree(final)  # a directory left incomplete by a crash
            os.rename(tmp, final)
        return Release(final, manifest_rel, digest)

    def load(self, digest):
        directory = self._release_dir(digest)
        try:
            with open(os.path.join(directory, "release.json")) as fh:
                meta = json.load(fh)
        except (OSError, ValueError):
            return None
        return Release(directory, meta["manifest"], digest)

    def pointers(self, name):
        try:
            with open(self._pointer_path(name)) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            data = {}
        return {"current": data.get("current"), "previous": data.get("previous"),
                "last_failed": data.get("last_failed")}

    def _write_pointers(self, name, data):
        path = self._pointer_path(name)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path))
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.rename(tmp, path)
        self._collect()

    def current(self, name):
        digest = self.pointers(name)["current"]
        return self.load(digest) if digest else None

    def previous(self, name):
        digest = self.pointers(name)["previous"]
        return self.load(digest) if digest else None

    def promote(self, name, digest):
        """After a successful apply of release DIGEST."""
        ptr = self.pointers(name)
        if ptr["current"] != digest:
            ptr["previous"], ptr["current"] = ptr["current"], digest
        self._write_pointers(name, ptr)
        return ptr

    def rolled_back(self, name):
        """After a successful apply of the previous release."""
        ptr = self.pointers(name)
        ptr = {"current": ptr["previous"], "previous": None, "last_failed": ptr["current"]}
        self._write_pointers(name, ptr)
        return ptr

    def forget(self, name):
        """After destroy: the deployment's releases go too."""
        try:
            os.unlink(self._pointer_path(name))
        except OSError:
            pass
        self._collect()

    def _collect(self):
        keep = set()
        directory = os.path.join(self.root, "deployments")
        for entry in os.listdir(directory) if os.path.isdir(directory) else ():
            if entry.endswith(".json"):
                ptr = self.pointers(entry[:-5])
                keep.update(d for d in (ptr["current"], ptr["previous"]) if d)
        releases = os.path.join(self.root, "releases")
        for entry in os.listdir(releases) if os.path.isdir(releases) else ():
            if entry not in keep:
                shutil.rmtree(os.path.join(releases, entry), ignore_errors=True)
