"""``SchedPoints.point`` follows ``hook`` (bound at assignment, a no-op while detached), and
``events.traces``: which events a tracer that lists its ``reads`` is sent."""

import pytest

from tdpsim.model.events import KvmPageFault, KvmTdpMmuSpteChanged, traces
from tdpsim.model.sched import SPTE_READ, SchedPoints


def test_point_calls_the_hook_attached_now():
    calls = []
    sp = SchedPoints()
    sp.point(SPTE_READ, ("spte", 1, 2), False)  # detached: nothing happens
    sp.hook = lambda kind, key, write: calls.append(("a", kind, key, write))
    sp.point(SPTE_READ, ("spte", 1, 2), True)
    sp.hook = None
    sp.point(SPTE_READ, ("spte", 3, 4), False)
    sp.hook = lambda kind, key, write: calls.append(("b", kind, key, write))
    sp.point(SPTE_READ, ("spte", 5, 6), False)
    assert calls == [("a", SPTE_READ, ("spte", 1, 2), True),
                     ("b", SPTE_READ, ("spte", 5, 6), False)]


def test_hook_given_at_construction_is_called():
    calls = []
    sp = SchedPoints(lambda kind, key, write: calls.append(key))
    sp.point(SPTE_READ, ("spte", 7, 8), False)
    assert calls == [("spte", 7, 8)]


def test_point_without_write_fails_detached_too():
    # The explorer's hook needs all three arguments; so must the detached no-op.
    with pytest.raises(TypeError):
        SchedPoints().point(SPTE_READ, ("spte", 1, 2))


def test_traces_respects_a_tracer_reads():
    def everything(ev):
        pass

    def some(ev):
        pass

    some.reads = frozenset({KvmTdpMmuSpteChanged})
    assert traces(everything, KvmPageFault) and traces(everything, KvmTdpMmuSpteChanged)
    assert traces(some, KvmTdpMmuSpteChanged) and not traces(some, KvmPageFault)
