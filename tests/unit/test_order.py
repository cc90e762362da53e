"""The chain a plan leads to on a shared hook (bpfdeploy/order.py), without a kernel."""

from __future__ import annotations

from bpfdeploy.manifest.model import Order, OrderKind
from bpfdeploy.order import plan_chain, satisfied

FIRST, LAST = Order(OrderKind.FIRST), Order(OrderKind.LAST)


def before(x):
    return Order(OrderKind.BEFORE, x)


def after(x):
    return Order(OrderKind.AFTER, x)


def test_new_attachments_are_placed_anchors_first_around_a_foreign_program():
    live = [(9, None, "other (id 9, not ours)")]
    labels, moved, notes = plan_chain(live, [("c", after("b"), False), ("a", LAST, False), ("b", FIRST, False)])
    assert labels == ["b", "c", "other (id 9, not ours)", "a"] and moved == [] and notes == []


def test_an_unordered_attachment_is_appended_as_the_kernel_does():
    labels, _, _ = plan_chain([(1, "a", "a")], [("a", None, True), ("b", None, False)])
    assert labels == ["a", "b"]


def test_a_chain_in_order_moves_nothing():
    live = [(2, "b", "b"), (3, "c", "c"), (9, None, "x"), (1, "a", "a")]
    labels, moved, _ = plan_chain(live, [("a", LAST, True), ("b", FIRST, True), ("c", after("b"), True)])
    assert labels == ["b", "c", "x", "a"] and moved == []


def test_only_the_attachments_out_of_place_are_moved():
    live = [(2, "b", "b"), (3, "c", "c"), (9, None, "x"), (1, "a", "a")]
    labels, moved, _ = plan_chain(live, [("a", FIRST, True), ("b", after("a"), True), ("c", LAST, True)])
    assert labels == ["a", "b", "x", "c"] and sorted(moved) == ["a", "c"]


def test_a_foreign_program_put_in_front_makes_first_move_again():
    live = [(9, None, "x"), (1, "a", "a")]
    labels, moved, _ = plan_chain(live, [("a", FIRST, True)])
    assert labels == ["a", "x"] and moved == ["a"]


def test_satisfied_means_right_next_to_the_anchor():
    assert satisfied(["a", "b"], "a", before("b")) and not satisfied(["a", "x", "b"], "a", before("b"))
    assert satisfied(["a", "b"], "b", after("a")) and not satisfied(["b", "a"], "b", after("a"))
    assert satisfied(["a"], "a", None)
