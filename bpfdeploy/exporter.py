"""The host-wide Prometheus exporter: every deployment's metrics behind one port.

`bpfdeploy metrics` serves one registry holding one collector per deployment (metrics.py makes
each deployment's families). Families of the same name from several deployments are merged into
one (a sample's ``deployment`` label tells them apart), because an exposition may hold a name once.
A deployment whose manifest cannot be prepared does not stop the others: it shows up as
``bpfdeploy_scrape_error{deployment="<manifest file>", source="manifest"} 1``, as a map that cannot
be read does (``source="<metric name>"``).

Port: ebpf_exporter (Cloudflare) owns 9435 in Prometheus's port allocations, and the allocated
range 9100-9999 is full, so bpfdeploy's default is 19435 (outside that range, not in
/etc/services); it listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

from bpfdeploy.model.frozen import frozen

DEFAULT_LISTEN = "127.0.0.1:19435"


@frozen
class Source:
    """One deployment to export: its manifest, and either what was prepared from it or why not."""

    manifest: Path
    prepared: object = None  # workflow.Prepared (when problem is empty)
    problem: str = ""  # why the manifest could not be prepared


def gather(manifests: list[Path], directory: Path | None, on_build=None) -> list[Source]:
    """What to export: the manifests named, every *.yaml/*.yml in DIRECTORY (--all), or, with
    neither, every deployment whose record is in the state dir (the record names its manifest).

    A manifest named on the command line must prepare (its error is raised, as other commands do);
    in the host-wide modes one that does not is kept as a Source with its problem, so the exporter
    still serves the rest and says what is missing.
    """
    from bpfdeploy.diagnostics import BpfdeployError
    from bpfdeploy.workflow import prepare

    host_wide = not manifests
    if directory is not None:
        found = sorted(p for pattern in ("*.yaml", "*.yml") for p in directory.glob(pattern))
        if not found:
            raise BpfdeployError(f"{directory}: no manifest (*.yaml) in this directory")
        paths = found
    elif manifests:
        paths = list(manifests)
    else:
        from bpfdeploy.status import list_deployments

        paths = [Path(d.manifest) for d in list_deployments() if d.manifest]
    out = []
    for path in paths:
        try:
            out.append(Source(path, prepare(path, on_build)))
        except BpfdeployError as exc:
            if not host_wide:
                raise
            out.append(Source(path, problem=exc.message))
            print(f"bpfdeploy metrics: {path}: {exc.message} (exported as bpfdeploy_scrape_error)", file=sys.stderr)
    return out


def build_info_family():
    """bpfdeploy_build_info: 1, with the versions as labels (the Prometheus convention)."""
    import platform

    from prometheus_client.core import GaugeMetricFamily

    from bpfdeploy import __version__

    family = GaugeMetricFamily("bpfdeploy_build_info", "bpfdeploy's version and the Python it runs on",
                               labels=["version", "python"])
    family.add_metric([__version__, platform.python_version()], 1)
    return family


class HostCollector:
    """Every source's families, merged by name, and bpfdeploy_build_info."""

    def __init__(self, sources: list[Source], read_status: Callable[[Source], object]):
        from bpfdeploy.metrics import DeploymentCollector

        self.sources = sources
        self.collectors = [(s, DeploymentCollector(s.prepared, (lambda s=s: read_status(s))))
                           for s in sources if not s.problem]

    def collect(self) -> Iterator:
        from bpfdeploy.metrics import scrape_errors

        merged: dict[str, object] = {}
        unprepared = [(str(s.manifest), "manifest", True) for s in self.sources if s.problem]
        merged["bpfdeploy_scrape_error"] = scrape_errors(unprepared)
        for source, collector in self.collectors:
            for family in collector.collect():
                first = merged.get(family.name)
                if first is None:
                    merged[family.name] = family
                elif first.type != family.type:  # the same name as a counter here and a gauge there
                    merged["bpfdeploy_scrape_error"].add_metric([source.prepared.desired.name, family.name], 1)
                else:
                    first.samples.extend(family.samples)
        yield build_info_family()
        yield from merged.values()


def families_json(registry) -> list[dict]:
    """The exposition as data (`metrics --json`): each family with its samples."""
    out = []
    for family in registry.collect():
        out.append({"name": family.name, "type": family.type, "help": family.documentation,
                    "samples": [{"name": s.name, "labels": dict(s.labels), "value": s.value}
                                for s in family.samples]})
    return out


def serve(registry, listen: str, names: list[str]) -> None:
    """Serve /metrics until interrupted."""
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    print(f"serving metrics of {', '.join(names) or 'no deployment'} on http://{listen}/metrics", file=sys.stderr,
          flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
