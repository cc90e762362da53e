"""model.frozen: the value classes behave as dataclasses' frozen + slots ones do.

dataclasses is the oracle: the same class body is made both ways and compared.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest

from bpfdeploy.model.frozen import FrozenInstanceError, asdict, field, fields, frozen, replace


@frozen
class Pin:
    path: str
    kind: str = "prog"
    tags: tuple = ()
    labels: dict = field(default_factory=dict)
    raw: object = field(default=None, repr=False, compare=False)


@frozen
class Holder:
    pins: tuple
    by_name: dict


@frozen(mutable=True)
class Tally:
    done: list = field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class PinDC:
    path: str
    kind: str = "prog"
    tags: tuple = ()
    labels: dict = dataclasses.field(default_factory=dict)
    raw: object = dataclasses.field(default=None, repr=False, compare=False)


def test_construction_repr_and_signature_match_dataclasses():
    a, b = Pin("/x", tags=(1,), raw=5), PinDC("/x", tags=(1,), raw=5)
    assert repr(a) == repr(b).replace("PinDC", "Pin")
    # a real signature (hypothesis and IDEs read it), the defaults as dataclasses has them
    ours, theirs = inspect.signature(Pin).parameters, inspect.signature(PinDC).parameters
    assert list(ours) == list(theirs) == ["path", "kind", "tags", "labels", "raw"]
    assert [ours[n].default for n in ("kind", "tags", "raw")] == [theirs[n].default for n in ("kind", "tags", "raw")]
    assert Pin.__slots__ == Pin.__match_args__ == fields(Pin) == fields(a) == tuple(f.name for f in dataclasses.fields(b))
    assert not hasattr(a, "__dict__")


def test_equality_and_hash_by_compared_fields_within_one_class():
    assert Pin("/x", raw=1) == Pin("/x", raw=2)  # compare=False
    assert Pin("/x") != Pin("/x", kind="map")
    assert Pin("/x") != PinDC("/x") and Pin("/x") != ("/x", "prog", (), {}, None)
    h = Holder((1,), {})
    with pytest.raises(TypeError):  # a dict field is unhashable, as in dataclasses
        hash(h)
    assert hash(Pin("/x", labels=None)) == hash(Pin("/x", labels=None, raw=9))
    assert len({Pin("/a", labels=None), Pin("/a", labels=None), Pin("/b", labels=None)}) == 2


def test_frozen_refuses_assignment_and_mutable_keeps_it():
    p = Pin("/x")
    with pytest.raises(FrozenInstanceError, match="'path'"):
        p.path = "/y"
    with pytest.raises(AttributeError):
        del p.kind
    t = Tally()
    t.done.append(1)
    t.done = [2]
    assert t.done == [2] and Tally.__hash__ is None
    assert Tally().done is not Tally().done  # a new list each time


def test_defaults_from_a_factory_are_fresh_and_order_is_checked():
    assert Pin("/x").labels is not Pin("/x").labels
    with pytest.raises(TypeError, match="without a default follows"):
        @frozen
        class Bad:
            a: int = 0
            b: int
    with pytest.raises(ValueError):
        field(default=1, default_factory=int)


def test_replace_asdict_pickle_and_copy():
    p = Pin("/x", tags=(1, 2), labels={"a": 1})
    q = replace(p, kind="map")
    assert (q.path, q.kind, q.tags, p.kind) == ("/x", "map", (1, 2), "prog")
    with pytest.raises(TypeError, match="no field 'nope'"):
        replace(p, nope=1)
    nested = Holder((p, Pin("/y")), {"k": p})
    assert asdict(nested) == {"pins": (asdict(p), asdict(Pin("/y"))), "by_name": {"k": asdict(p)}}
    assert asdict(p) == dataclasses.asdict(PinDC("/x", tags=(1, 2), labels={"a": 1}))
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(nested, proto)) == nested
    assert copy.copy(p) == p and copy.deepcopy(nested) == nested
