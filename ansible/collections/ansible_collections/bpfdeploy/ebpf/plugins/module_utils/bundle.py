# -*- coding: utf-8 -*-
# Copyright: bpfdeploy contributors
# Apache License 2.0 (see LICENSE in the bpfdeploy repository)
"""A release bundle: a manifest and every file it refers to, as one content-addressed unit.

The same code runs on the controller (the action plugins collect a controller-side manifest)
and on the target (remote_src). Only the standard library and PyYAML are used, so it works
under any Python that ansible-core runs modules with.

Collected: the manifest; for each object its ``source`` (with every regular file in the
source's directory, for ``#include "..."``, and the files those quoted includes name),
its ``file`` and its ``include_dirs`` (recursively); and each attachment's uprobe
``binary`` when it is a relative path. Paths keep their layout relative to the common
parent directory, so the manifest's relative references stay valid on the target.
Artifacts (a ``bpfdeploy build --out`` directory) are collected under ``artifacts/``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import os
import re

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


class BundleError(Exception):
    """The manifest or a file it names cannot be collected."""


def _read_manifest(path):
    import yaml  # PyYAML: a dependency of ansible-core on the controller and of bpfdeploy on targets

    try:
        with open(path, "rb") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise BundleError("cannot read manifest %s: %s" % (path, exc))
    if not isinstance(data, dict):
        raise BundleError("manifest %s: expected a mapping at the top level" % path)
    return data


def _files_below(directory):
    out = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            if os.path.isfile(full):
                out.append(full)
    return out


def _with_includes(source):
    """The source, its directory's files, and files named by quoted includes (transitively)."""
    directory = os.path.dirname(source)
    found = set([source])
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if os.path.isfile(full):
            found.add(full)
    scanned = set()
    todo = sorted(found)
    while todo:
        path = todo.pop()
        if path in scanned:
            continue
        scanned.add(path)
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            continue  # bpfdeploy reports a missing source itself, with the manifest line
        for inc in _QUOTED_INCLUDE.findall(text):
            target = os.path.normpath(os.path.join(os.path.dirname(path), inc))
            if os.path.isfile(target):
                found.add(target)
                todo.append(target)
    return found


def referenced_files(manifest_path):
    """Every file the manifest needs, as absolute paths (the manifest first)."""
    manifest_path = os.path.abspath(manifest_path)
    base = os.path.dirname(manifest_path)
    data = _read_manifest(manifest_path)
    files = set()

    def rel(value):
        return os.path.normpath(os.path.join(base, value)) if isinstance(value, str) and value else None

    objects = data.get("objects") or {}
    if isinstance(objects, dict):
        for obj in objects.values():
            if not isinstance(obj, dict):
                continue
            source = rel(obj.get("source"))
            if source and os.path.isfile(source):
                files.update(_with_includes(source))
            prebuilt = rel(obj.get("file"))
            if prebuilt and os.path.isfile(prebuilt):
                files.add(prebuilt)
            for inc in obj.get("include_dirs") or ():
                inc_dir = rel(inc)
                if inc_dir and os.path.isdir(inc_dir):
                    files.update(_files_below(inc_dir))
    for att in data.get("attachments") or ():
        if isinstance(att, dict) and isinstance(att.get("binary"), str) and not att["binary"].startswith("/"):
            binary = rel(att["binary"])
            if binary and os.path.isfile(binary):
                files.add(binary)
    files.discard(manifest_path)
    return [manifest_path] + sorted(files)


def collect_raw(manifest_path, artifacts_dir=None):
    """(manifest relpath, files, artifacts): relative paths -> bytes."""
    if not os.path.isfile(manifest_path):
        raise BundleError("manifest %s does not exist" % manifest_path)
    paths = referenced_files(manifest_path)
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    total = 0
    files = {}
    for path in paths:
        with open(path, "rb") as fh:
            content = fh.read()
        total += len(content)
        files[os.path.relpath(path, root)] = content
    artifacts = {}
    if artifacts_dir:
        if not os.path.isdir(artifacts_dir):
            raise BundleError("artifacts directory %s does not exist" % artifacts_dir)
        for path in _files_below(artifacts_dir):
            with open(path, "rb") as fh:
                content = fh.read()
            total += len(content)
            artifacts[os.path.relpath(path, artifacts_dir)] = content
    if total > MAX_BUNDLE_BYTES:
        raise BundleError("the manifest's files add up to %d bytes, more than the %d a bundle may carry"
                          % (total, MAX_BUNDLE_BYTES))
    return os.path.relpath(paths[0], root), files, artifacts


def collect(manifest_path, artifacts_dir=None):
    """The bundle as a JSON-able dict for the module: {manifest, files, artifacts, digest} (base64 contents)."""
    manifest_rel, files, artifacts = collect_raw(manifest_path, artifacts_dir)
    return {
        "manifest": manifest_rel,
        "files": dict((k, base64.b64encode(v).decode("ascii")) for k, v in files.items()),
        "artifacts": dict((k, base64.b64encode(v).decode("ascii")) for k, v in artifacts.items()) or None,
        "digest": digest(files, artifacts),
    }


def with_pin_root(text, pin_root):
    """The manifest with its pin_root set (a top-level pin_root line replaced, or one appended),
    so that every other line keeps its number for diagnostics."""
    lines = text.decode("utf-8").splitlines(True)
    new = "pin_root: %s\n" % pin_root
    for i, line in enumerate(lines):
        if re.match(r"^pin_root\s*:", line):
            lines[i] = new
            break
    else:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(new)
    return "".join(lines).encode("utf-8")


def digest(files, artifacts):
    """sha256 over every path and content: the release's identity."""
    h = hashlib.sha256()
    for group, items in (("files", files), ("artifacts", artifacts or {})):
        for name in sorted(items):
            content = items[name]
            h.update(("%s\0%s\0%d\0" % (group, name, len(content))).encode("utf-8"))
            h.update(content)
    return h.hexdigest()


def decode(bundle):
    """(manifest relpath, files, artifacts) as bytes, after checking the digest and the paths."""
    try:
        files = dict((k, base64.b64decode(v)) for k, v in bundle["files"].items())
        artifacts = dict((k, base64.b64decode(v)) for k, v in (bundle.get("artifacts") or {}).items())
        manifest = bundle["manifest"]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError("malformed bundle: %s" % exc)
    for name in list(files) + list(artifacts):
        if name.startswith("/") or ".." in name.split("/"):
            raise BundleError("bundle path %r leaves the release directory" % name)
    if manifest not in files:
        raise BundleError("the bundle does not contain its manifest %s" % manifest)
    if digest(files, artifacts) != bundle.get("digest"):
        raise BundleError("the bundle's digest does not match its contents (damaged in transfer)")
    return manifest, files, artifacts
