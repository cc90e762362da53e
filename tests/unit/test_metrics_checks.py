"""validate refuses metrics that could never show a sample: a value or key field the map's BTF
does not have (checked on the built object), and names that clash."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bpfdeploy.btf_fields import MapFields, parse_map_fields
from bpfdeploy.diagnostics import ManifestError

REPO = Path(__file__).resolve().parents[2]
BTF = REPO / "tests" / "fixtures" / "btf"


def test_map_fields_from_recorded_btf_of_the_counters_object():
    fields = parse_map_fields(json.loads((BTF / "counters.json").read_text()))
    assert fields == {"traffic": MapFields(key=frozenset(), value=frozenset({"packets", "bytes"}))}


def test_nested_anonymous_and_qualified_members_are_dotted_paths():
    types = [
        {"id": 1, "kind": "INT", "name": "u64", "size": 8},
        {"id": 2, "kind": "STRUCT", "name": "inner", "members": [{"name": "drops", "type_id": 1}]},
        {"id": 3, "kind": "TYPEDEF", "name": "inner_t", "type_id": 2},
        {"id": 4, "kind": "CONST", "name": "(anon)", "type_id": 3},
        {"id": 5, "kind": "UNION", "name": "(anon)", "members": [{"name": "a", "type_id": 1},
                                                                  {"name": "b", "type_id": 1}]},
        {"id": 6, "kind": "STRUCT", "name": "value", "members": [{"name": "stats", "type_id": 4},
                                                                  {"name": "(anon)", "type_id": 5}]},
        {"id": 7, "kind": "PTR", "name": "(anon)", "type_id": 6},
        {"id": 8, "kind": "PTR", "name": "(anon)", "type_id": 1},
        {"id": 9, "kind": "STRUCT", "name": "(anon)", "members": [{"name": "type", "type_id": 8},
                                                                   {"name": "value", "type_id": 7}]},
        {"id": 10, "kind": "VAR", "name": "m", "type_id": 9},
        {"id": 11, "kind": "DATASEC", "name": ".maps", "vars": [{"type_id": 10}]},
    ]
    assert parse_map_fields({"types": types}) == {
        "m": MapFields(key=None, value=frozenset({"stats", "stats.drops", "a", "b"}))}


def _manifest(tmp_path: Path, metric: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: metric-fields
        objects:
          counters: {{source: {REPO}/bpf/cgroup-counters/counters.bpf.c}}
        metrics:
        """) + textwrap.indent(textwrap.dedent(metric), "  "))
    return path


@pytest.mark.parametrize("metric, path, message, line", [
    ("""\
     - name: cg_packets_total
       map: traffic
       value: packet
     """, "metrics[0].value", "the value of map 'traffic' has no field 'packet'", 8),
    ("""\
     - name: cg_packets_total
       map: traffic
     """, "metrics[0]", "the value of map 'traffic' is a struct; name the field", 6),
    ("""\
     - name: cg_packets_total
       map: traffic
       value: packets
       labels: [{name: dir, field: direction}]
     """, "metrics[0].labels[0].field", "the key of map 'traffic' has no field 'direction'", 9),
])
def test_validate_refuses_a_metric_field_the_map_does_not_have(tmp_path, monkeypatch, metric, path, message, line):
    from bpfdeploy.workflow import prepare

    monkeypatch.setenv("BPFDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ManifestError) as info:
        prepare(_manifest(tmp_path, metric))
    found = [(d.path, d.line) for d in info.value.diagnostics if message in d.message]
    assert found == [(path, line)], info.value.diagnostics


def test_a_metric_on_an_existing_field_is_valid(tmp_path, monkeypatch):
    from bpfdeploy.workflow import prepare

    monkeypatch.setenv("BPFDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    prepared = prepare(_manifest(tmp_path, """\
        - name: cg_bytes_total
          map: traffic
          value: bytes
        """))
    assert [m.value_field for m in prepared.manifest.metrics] == ["bytes"]
