"""Decoding map keys and values as bpftool's JSON gives them: shared by `dump` and `metrics`.

bpftool prints each entry as raw bytes (``"key": ["0x7f", ...]``) and, when the map has BTF,
as ``formatted`` values: integers in host byte order, structs as objects, char arrays as
strings, per-CPU values as ``"values": [{"cpu": 0, "value": ...}, ...]``. A decoder turns
one of those into the text a reader wants: an IPv4 address from a ``__be32``, a port from a
``__be16``, a string from a char array, a name from an enum number.
"""

from __future__ import annotations

import ipaddress
import socket

DECODE_KINDS = ("integer", "ipv4", "ipv6", "port", "string", "enum", "hex")


def raw_bytes(values) -> bytes:
    """The bytes of bpftool's raw form (a list of "0x.." strings); b"" for anything else."""
    try:
        return bytes(int(x, 16) for x in values) if isinstance(values, list) else b""
    except (TypeError, ValueError):
        return b""


def field(value, name: str | None):
    """A (dotted) field of a formatted struct; the value itself for None. KeyError when absent."""
    if name is None:
        return value
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value


def number(value) -> float:
    """A formatted value as a number; per-CPU values are summed."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):  # per-CPU values: summed
        return sum(number(v.get("value", v) if isinstance(v, dict) else v) for v in value)
    if isinstance(value, str):
        return float(int(value, 0))
    raise ValueError(f"not a number: {value!r}")


def _as_int(value, raw: bytes) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return None
    if isinstance(value, list):  # raw bytes (no BTF): in host (little-endian) order, as BTF would print them
        data = raw_bytes(value) or raw
        return int.from_bytes(data, "little") if data else None
    return None


def _bytes_of(value, raw: bytes) -> bytes:
    if isinstance(value, list):
        return bytes(int(x, 0) if isinstance(x, str) else int(x) for x in value)
    if isinstance(value, int):
        return value.to_bytes(16, "little")
    return raw


def decode(kind: str, value, raw: bytes = b"", enum: tuple[tuple[str, str], ...] = ()) -> str:
    """One key (or key field) as text. raw: the entry's raw key bytes (used when there is no BTF)."""
    if kind == "string":
        if isinstance(value, str):
            return value
        return _bytes_of(value, raw).split(b"\0", 1)[0].decode(errors="replace")
    if kind == "ipv6":
        return str(ipaddress.IPv6Address(_bytes_of(value, raw)[:16]))
    n = _as_int(value, raw)
    if n is None:
        return str(value)
    if kind == "ipv4":
        return str(ipaddress.IPv4Address(socket.ntohl(n & 0xFFFFFFFF)))
    if kind == "port":
        return str(socket.ntohs(n & 0xFFFF))
    if kind == "hex":
        return hex(n)
    if kind == "enum":
        return dict(enum).get(str(n), str(n))
    return str(n)


def decode_label(label, value, raw: bytes) -> str:
    """A metrics label (manifest.model.MetricLabel) from a key or key field."""
    return decode(label.decode, value, raw, label.enum)


def per_cpu_sum(values: list):
    """The sum over CPUs of per-CPU values: numbers add up, structs field by field; None if not numbers."""
    if not values:
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sum(values)
    if all(isinstance(v, dict) for v in values) and all(v.keys() == values[0].keys() for v in values):
        out = {}
        for name in values[0]:
            out[name] = per_cpu_sum([v[name] for v in values])
        return out
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1 \
            and not any(isinstance(x, str) for v in values for x in v):
        return [per_cpu_sum(list(col)) for col in zip(*values)]
    return None
