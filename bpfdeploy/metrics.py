"""Prometheus metrics from a deployment: its maps (as the manifest's metrics section says),
per-program run counts and run time, and the deployment's health.

Maps are read at scrape time through `bpftool map dump -j`, whose BTF-formatted output gives
struct fields and char arrays by name; the exposition is made by the Prometheus client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from bpfdeploy.decode import decode_label, field, number, raw_bytes  # noqa: F401 (decode_label: re-exported)
from bpfdeploy.diagnostics import BpfdeployError
from bpfdeploy.kernel import runner
from bpfdeploy.manifest.model import MetricLabel, MetricSpec
from bpfdeploy.model.frozen import frozen


def read_map(pin: Path) -> list[dict]:
    result = runner.run(["bpftool", "-j", "map", "dump", "pinned", str(pin)])
    if result.returncode != 0:
        raise BpfdeployError(f"cannot dump {pin}: {result.error_text()}")
    return json.loads(result.stdout or "[]")


# The decoders are shared with `dump` (decode.py); the old names stay for callers of this module.
_raw_bytes, _field, _number = raw_bytes, field, number


@frozen
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


def map_samples(spec: MetricSpec, entries: list[dict]) -> list[Sample]:
    """The samples of one metric from a map dump (pure: unit-testable on recorded dumps)."""
    out = []
    for entry in entries:
        formatted = entry.get("formatted")
        key = formatted["key"] if formatted else entry.get("key")
        value = formatted["value"] if formatted else entry.get("value", entry.get("values"))
        raw_key = _raw_bytes(entry.get("key"))
        try:
            number = _number(_field(value, spec.value_field))
        except (KeyError, ValueError, TypeError):
            continue
        labels = []
        if spec.labels:
            for label in spec.labels:
                part = _field(key, label.field)
                labels.append((label.name, decode_label(label, part, raw_key)))
        elif len(entries) > 1:
            labels.append(("key", decode_label(MetricLabel("key", None, "integer", ()), key, raw_key)))
        out.append(Sample(tuple(labels), number))
    return out


class DeploymentCollector:
    """A Prometheus collector for one deployment; each scrape reads the kernel afresh."""

    def __init__(self, prepared, read_status: Callable[[], object]):
        self.prepared = prepared
        self.read_status = read_status

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        desired = self.prepared.desired
        deployment = desired.name
        failed: list[tuple[str, bool]] = []  # (source, could not be read): bpfdeploy_scrape_error
        for spec in self.prepared.manifest.metrics:
            pin = desired.pin_root / "maps" / spec.map
            try:
                samples = map_samples(spec, read_map(pin))
                failed.append((spec.name, False))
            except (BpfdeployError, ValueError) as exc:  # a map that is gone or cannot be dumped: said, not silent
                samples = []
                failed.append((spec.name, True))
                _report(deployment, spec.name, exc)
            label_names = [name for name, _v in samples[0].labels] if samples else [l.name for l in spec.labels]
            cls = CounterMetricFamily if spec.type == "counter" else GaugeMetricFamily
            family = cls(spec.name.removesuffix("_total") if spec.type == "counter" else spec.name, spec.help,
                         labels=["deployment", *label_names])
            for sample in samples:
                family.add_metric([deployment, *(v for _k, v in sample.labels)], sample.value)
            yield family
        try:
            status = self.read_status()
        except BpfdeployError as exc:
            _report(deployment, "status", exc)
            yield scrape_errors([(deployment, source, bad) for source, bad in [*failed, ("status", True)]])
            return
        failed.append(("status", False))
        runs = CounterMetricFamily("bpfdeploy_program_run_count", "Times each program ran (needs kernel.bpf_stats_enabled)",
                                   labels=["deployment", "program", "type"])
        runtime = CounterMetricFamily("bpfdeploy_program_run_time_seconds",
                                      "Time each program ran (needs kernel.bpf_stats_enabled)",
                                      labels=["deployment", "program", "type"])
        for p in status.programs:
            if p.run_cnt is not None:
                runs.add_metric([deployment, p.name, p.type], p.run_cnt)
                runtime.add_metric([deployment, p.name, p.type], p.run_time_ns / 1e9)
        yield runs
        yield runtime
        counts = status.counts()
        for key, help_text in (("programs_expected", "Programs the manifest deploys"),
                               ("programs_loaded", "Programs loaded and pinned"),
                               ("attachments_expected", "Attachments the manifest makes"),
                               ("attachments_in_sync", "Attachments in place as the manifest says"),
                               ("drifted", "Resources that differ from the manifest")):
            gauge = GaugeMetricFamily(f"bpfdeploy_deployment_{key}", help_text, labels=["deployment"])
            gauge.add_metric([deployment], counts[key])
            yield gauge
        up = GaugeMetricFamily("bpfdeploy_deployment_healthy", "1 when the kernel matches the manifest",
                               labels=["deployment"])
        up.add_metric([deployment], 1 if status.healthy else 0)
        yield up
        yield scrape_errors([(deployment, source, bad) for source, bad in failed])


def scrape_errors(failed: list[tuple[str, str, bool]]):
    """bpfdeploy_scrape_error{deployment, source}: 1 for what could not be read at this scrape, 0 for
    what could (source: a metric's name, or 'status' for the program and health families)."""
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily("bpfdeploy_scrape_error", "1 when part of a deployment could not be read at this "
                               "scrape (source: a metric's name, 'status', or 'manifest')",
                               labels=["deployment", "source"])
    for deployment, source, bad in failed:
        family.add_metric([deployment, source], 1 if bad else 0)
    return family


def _report(deployment: str, source: str, exc: Exception) -> None:
    import sys

    print(f"bpfdeploy metrics: {deployment}: {source}: {getattr(exc, 'message', exc)}", file=sys.stderr, flush=True)
