"""Frozen value classes, as `dataclasses` makes them, without its cost at import.

`@dataclass(frozen=True, slots=True)` writes six methods per class as source text and
compiles each with `exec`: about 350 µs a class on the machines we run on. A no-op plan
defines about 60 such classes before it does any work, so that was 21 ms of an 80 ms
command (issue 16). `@frozen` gives the same meaning for about 40 µs a class: it compiles
one `__init__` per class and shares the other methods, which read the fields through one
`operator.attrgetter`.

    @frozen
    class Pin:
        path: str
        kind: str = "prog"
        labels: dict = field(default_factory=dict)

What a class gets, as with dataclasses' frozen + slots: an `__init__` taking the annotated
fields in order (defaults and `field(default_factory=...)` as there), `__slots__`,
`__match_args__`, equality and hash by field values between instances of the same class,
a repr `Pin(path='/x', kind='prog', labels={})`, no assignment after construction
(FrozenInstanceError, an AttributeError), pickling and copying. `@frozen(mutable=True)`
keeps assignment and drops the hash (dataclasses' plain `@dataclass`). `replace()`,
`asdict()` and `fields()` work as dataclasses' do. A `__slots__` written in the class body
adds slots that are not fields (not in `__init__`, equality, repr or pickles): room for an
index a method builds once (set it with `object.__setattr__`). Not supported, because nothing here
needs them: inheritance between frozen classes, ClassVar and InitVar fields, ordering,
`__post_init__`.
"""

from __future__ import annotations

from operator import attrgetter

_MISSING = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen instance."""


class _Field:
    __slots__ = ("default", "default_factory", "repr", "compare")

    def __init__(self, default, default_factory, repr, compare):
        self.default, self.default_factory, self.repr, self.compare = default, default_factory, repr, compare


def field(*, default=_MISSING, default_factory=_MISSING, repr: bool = True, compare: bool = True):
    """A field's default made at each construction (`default_factory`), or a field left out of
    the repr or out of equality and hash; as dataclasses.field."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("field() takes default or default_factory, not both")
    return _Field(default, default_factory, repr, compare)


def frozen(cls=None, /, *, mutable: bool = False):
    """The class decorator: `@frozen` or `@frozen(mutable=True)`."""
    if cls is None:
        return lambda c: _make(c, mutable)
    return _make(cls, mutable)


def fields(obj_or_cls) -> tuple[str, ...]:
    """The field names of a frozen class or instance, in order."""
    return (obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)).__frozen_fields__


def is_frozen(obj) -> bool:
    return hasattr(type(obj), "__frozen_fields__")


def replace(obj, /, **changes):
    """A copy of `obj` with some fields changed, as dataclasses.replace."""
    cls = type(obj)
    names = cls.__frozen_fields__
    for name in changes:
        if name not in names:
            raise TypeError(f"{cls.__qualname__} has no field {name!r}")
    return cls(**{n: changes[n] if n in changes else getattr(obj, n) for n in names})


def asdict(obj) -> dict:
    """Fields as a dict, frozen values inside it (and in lists, tuples, dicts) turned into dicts too."""
    return {n: _plain(getattr(obj, n)) for n in type(obj).__frozen_fields__}


def _plain(value):
    if hasattr(type(value), "__frozen_fields__"):
        return asdict(value)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


# The methods every frozen class shares; `__frozen_key__` is the class's attrgetter of its
# compared fields, `__frozen_all__` of every field.

def _eq(self, other):
    if other.__class__ is self.__class__:
        return self.__frozen_key__(self) == self.__frozen_key__(other)
    return NotImplemented


def _hash(self):
    return hash(self.__frozen_key__(self))


def _repr(self):
    shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__frozen_repr__)
    return f"{type(self).__qualname__}({shown})"


def _setattr(self, name, value):
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self, name):
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _reduce(self):
    # Rebuild through __init__: the default pickling of slots would assign each field.
    return type(self), self.__frozen_all__(self)


def _getter(names: tuple[str, ...]):
    # staticmethod: a plain function stored on the class would be bound as a method.
    if not names:
        return staticmethod(lambda obj: ())
    if len(names) == 1:
        only = attrgetter(names[0])
        return staticmethod(lambda obj: (only(obj),))
    return attrgetter(*names)


def _make(cls, mutable: bool):
    ns = dict(cls.__dict__)
    names = tuple(ns.get("__annotations__", {}))
    defaults, factories, hidden, uncompared = {}, {}, set(), set()
    for name in names:
        value = ns.pop(name, _MISSING)
        if isinstance(value, _Field):
            if value.default_factory is not _MISSING:
                factories[name] = value.default_factory
            elif value.default is not _MISSING:
                defaults[name] = value.default
            if not value.repr:
                hidden.add(name)
            if not value.compare:
                uncompared.add(name)
        elif value is not _MISSING:
            defaults[name] = value
    extra = tuple(ns.pop("__slots__", ()))  # not fields: caches a method fills in
    for name in extra:
        ns.pop(name, None)  # the member descriptor the class statement made for it
    ns.pop("__dict__", None)
    ns.pop("__weakref__", None)
    ns["__slots__"] = names + extra
    ns["__match_args__"] = names
    ns["__frozen_fields__"] = names
    ns["__frozen_repr__"] = tuple(n for n in names if n not in hidden)
    ns["__frozen_all__"] = _getter(names)
    ns["__frozen_key__"] = _getter(tuple(n for n in names if n not in uncompared))
    ns.setdefault("__eq__", _eq)
    ns.setdefault("__repr__", _repr)
    ns["__reduce__"] = _reduce
    if mutable:
        ns["__hash__"] = None
    else:
        ns["__hash__"] = _hash
        ns["__setattr__"] = _setattr
        ns["__delattr__"] = _delattr
    new = type(cls)(cls.__name__, cls.__bases__, ns)
    new.__init__ = _init(new, names, defaults, factories)
    return new


def _init(cls, names, defaults, factories):
    """Compile `def __init__(self, a, b=_d_b, c=_MISSING): _set_a(self, a) ...` for this class.

    Each field is stored through its slot's own descriptor, which a frozen class's
    __setattr__ does not stand in the way of."""
    scope = {"_MISSING": _MISSING}
    params, body, seen_default = [], [], False
    for name in names:
        scope[f"_set_{name}"] = cls.__dict__[name].__set__
        if name in factories:
            scope[f"_f_{name}"] = factories[name]
            params.append(f"{name}=_MISSING")
            body.append(f"    _set_{name}(self, _f_{name}() if {name} is _MISSING else {name})")
            seen_default = True
        elif name in defaults:
            scope[f"_d_{name}"] = defaults[name]
            params.append(f"{name}=_d_{name}")
            body.append(f"    _set_{name}(self, {name})")
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__qualname__}: field {name!r} without a default follows one with a default")
        else:
            params.append(name)
            body.append(f"    _set_{name}(self, {name})")
    source = f"def __init__(self{''.join(', ' + p for p in params)}):\n" + ("\n".join(body) or "    pass")
    exec(source, scope)  # noqa: S102 - our own field names, checked identifiers by the class statement
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    return init
