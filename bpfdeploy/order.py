"""Programs in a known order on a shared hook: the chain a plan leads to (pure).

The kernel runs the programs of a tcx hook or of a cgroup hook (links, and legacy multi
attaches) as a chain, and since kernel 6.6 (tcx) and 6.16 (cgroup) places a new link where it
is told: BPF_F_BEFORE or BPF_F_AFTER, relative to another link (BPF_F_LINK) or to nothing (the
front or the back). Without a flag a link is appended. BPF_PROG_QUERY lists the chain in order.

Given the chain the kernel reports now, which attachments of ours hold which entries, and the
``order`` each attachment asks for, ``plan_chain`` says which existing attachments are out of
place (they are made again at their place) and what the chain will be after apply. Nothing
here reads the kernel.
"""

from __future__ import annotations


from bpfdeploy.manifest.model import Order, OrderKind
from bpfdeploy.model.frozen import frozen


@frozen
class ChainEntry:
    label: str  # our attachment's name, or the program's name and id when it is not ours
    prog_id: int  # 0: not attached yet (made by this plan)
    ours: bool
    moved: bool = False  # made or made again by this plan


@frozen
class Chain:
    """The programs on one hook after apply, first to last, as the kernel will run them."""

    hook: str
    entries: tuple[ChainEntry, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        return " -> ".join(e.label + ("*" if e.moved else "") for e in self.entries) or "(empty)"

    def to_json(self) -> dict:
        return {"hook": self.hook, "programs": [{"name": e.label, "prog_id": e.prog_id or None, "ours": e.ours,
                                                 "placed_by_this_plan": e.moved} for e in self.entries],
                "notes": list(self.notes)}


def satisfied(labels: list[str], name: str, order: Order | None) -> bool:
    """Whether ``name`` sits where its order says in a chain of labels."""
    if order is None:
        return True
    i = labels.index(name)
    if order.kind is OrderKind.FIRST:
        return i == 0
    if order.kind is OrderKind.LAST:
        return i == len(labels) - 1
    if order.anchor not in labels:
        return False
    j = labels.index(order.anchor)
    return j == i + 1 if order.kind is OrderKind.BEFORE else j == i - 1


def _insert(labels: list[str], name: str, order: Order | None) -> None:
    """Where the kernel puts a new link with this order."""
    if order is None or order.kind is OrderKind.LAST:
        labels.append(name)
    elif order.kind is OrderKind.FIRST:
        labels.insert(0, name)
    else:
        j = labels.index(order.anchor)
        labels.insert(j if order.kind is OrderKind.BEFORE else j + 1, name)


def plan_chain(live: list[tuple[int, str | None, str]], wanted: list[tuple[str, Order | None, bool]]
               ) -> tuple[list[str], list[str], list[str]]:
    """The chain after apply.

    live: the hook's chain now, as (program id, our attachment's name or None, label).
    wanted: our attachments on the hook as (name, order, exists now), in manifest order.
    Returns (labels of the resulting chain, names of existing attachments to make again at their
    place, notes for the reader). A new attachment is placed after its anchor has been.
    """
    orders = {name: order for name, order, _exists in wanted}
    existing = [name for name, _o, exists in wanted if exists]
    new = [name for name, _o, exists in wanted if not exists]
    current = [ours or label for _id, ours, label in live]
    moved: list[str] = []
    while True:
        labels = [x for x in current if x not in moved]
        pending = new + moved
        while pending:  # anchors first: an attachment waits until its anchor is in the chain
            ready = next((n for n in pending if orders[n] is None or orders[n].anchor is None
                          or orders[n].anchor in labels), None)
            if ready is None:  # cannot happen for a valid manifest (anchors exist, no cycles)
                labels += pending
                break
            _insert(labels, ready, orders[ready])
            pending.remove(ready)
        wrong = [n for n in existing if n not in moved and not satisfied(labels, n, orders[n])]
        if not wrong:
            break
        moved.append(wrong[0])
    notes = [f"{n} cannot be kept {orders[n].describe()} (another attachment is placed there)"
             for n in new + moved if not satisfied(labels, n, orders[n])]
    return labels, moved, notes
