"""dump's shapes from recorded bpftool dumps: per-CPU values per CPU and summed, decoded keys, globals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bpfdeploy.decode import decode, per_cpu_sum
from bpfdeploy.diagnostics import BpfdeployError
from bpfdeploy.dump import KeyDecoder, decode_key, globals_entries, normalise, parse_key_decoder

DUMPS = Path(__file__).resolve().parents[1] / "fixtures" / "dumps"


def _dump(name: str) -> list[dict]:
    return json.loads((DUMPS / name).read_text())


def test_per_cpu_values_are_shown_per_cpu_and_summed():
    entries = normalise(_dump("dump-percpu-array.json"))
    assert entries[0] == {"key": 0, "value": 14, "per_cpu": [14, 0]}
    assert entries[1] == {"key": 1, "value": 0, "per_cpu": [0, 0]}


def test_an_ipv4_key_is_decoded_and_the_raw_key_kept():
    entries = normalise(_dump("dump-hash-ipv4-key.json"), (KeyDecoder(None, "ipv4"),))
    assert entries == [{"key": "127.0.0.1", "value": 14, "key_raw": 16777343}]
    assert normalise(_dump("dump-hash-ipv4-key.json"))[0]["key"] == 16777343  # undecoded: BTF's integer


def test_a_datasec_dump_lists_each_global_variable():
    assert globals_entries(_dump("dump-bss.json"), ".bss") == [{"key": "packets_seen", "value": 14}]
    raw = [{"key": ["0x00"] * 4, "value": ["0x01", "0x00"]}]  # no BTF: the section's bytes
    assert globals_entries(raw, ".data") == [{"key": ".data", "value": ["0x01", "0x00"]}]


def test_struct_keys_decode_field_by_field():
    key = {"saddr": 16777343, "dport": 0x5000, "proto": 6}
    decoded = decode_key(key, b"", (KeyDecoder("saddr", "ipv4"), KeyDecoder("dport", "port")))
    assert decoded == {"saddr": "127.0.0.1", "dport": "80", "proto": 6}


def test_raw_keys_without_btf_decode_from_their_bytes():
    assert decode("ipv4", ["0x7f", "0x00", "0x00", "0x01"]) == "127.0.0.1"
    assert decode("integer", ["0x02", "0x01", "0x00", "0x00"]) == "258"
    assert decode("string", "comm") == "comm"
    assert decode("string", [0x62, 0x61, 0x73, 0x68, 0, 0x7a]) == "bash"


def test_per_cpu_sums_of_structs_and_things_that_do_not_add_up():
    assert per_cpu_sum([{"packets": 1, "bytes": 10}, {"packets": 2, "bytes": 20}]) == {"packets": 3, "bytes": 30}
    assert per_cpu_sum(["a", "b"]) is None
    assert per_cpu_sum([[1, 2], [3, 4]]) == [4, 6]


def test_key_decode_options():
    assert parse_key_decoder("ipv4") == KeyDecoder(None, "ipv4")
    assert parse_key_decoder("saddr=ipv4") == KeyDecoder("saddr", "ipv4")
    with pytest.raises(BpfdeployError, match="KIND one of integer, ipv4"):
        parse_key_decoder("ip4")
