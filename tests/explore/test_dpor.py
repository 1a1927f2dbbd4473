"""Optimal DPOR explores exactly one execution per Mazurkiewicz trace.

The programs (``tdpsim.explore.programs``) are small enough to count their traces by hand.
Every execution's trace signature identifies its Mazurkiewicz trace, so "one execution per
trace" means: as many executions as distinct signatures, and that number equals the count
derived by hand."""

from __future__ import annotations

from math import factorial

import pytest

from tdpsim.explore import DfsScheduler, DporScheduler
from tdpsim.explore.engine import Engine
from tdpsim.explore.programs import program_world, trace_signature


def _explore(program, sched) -> tuple[int, set, int]:
    sigs = set()
    n = 0
    while sched.new_execution():
        log: dict = {}
        res = Engine(program_world(program, log), sched).run()
        sched.done(res)
        assert res.failure is None, res.failure
        n += 1
        if not res.pruned:
            sigs.add(trace_signature(log))
    return n, sigs, getattr(sched, "pruned", 0)


W, R = "w", "r"

# (program, number of Mazurkiewicz traces derived by hand)
PROGRAMS = {
    # n writers of one variable: every order of the writes, n!.
    "3 writers": ([[(W, "x")]] * 3, factorial(3)),
    "4 writers": ([[(W, "x")]] * 4, factorial(4)),
    # n independent writers (one variable each): one trace.
    "4 independent writers": ([[(W, f"x{i}")] for i in range(4)], 1),
    # w writers and r readers of x: w! write orders, each read in one of w+1 gaps.
    "2 writers 2 readers": ([[(W, "x")], [(W, "x")], [(R, "x")], [(R, "x")]],
                            factorial(2) * 3 ** 2),
    # local work first: the writes still give 3!, the reads commute.
    "3 writers after reads": ([[(R, "y"), (R, "z"), (W, "x")]] * 3, factorial(3)),
    # t0 writes x then y, t1 writes y then x: x-order and y-order, minus the cyclic one.
    "crossed": ([[(W, "x"), (W, "y")], [(W, "y"), (W, "x")]], 3),
    # two critical sections: which one takes the lock first.
    "2 critical sections": ([[("lock", "w"), (W, "x"), ("unlock", "w")]] * 2, 2),
    # three critical sections: 3! lock orders.
    "3 critical sections": ([[("lock", "w"), (W, "x"), ("unlock", "w")]] * 3, 6),
    # readers under the shared lock commute: one trace.
    "2 readers locked": ([[("lock", "r"), (R, "x"), ("unlock", "r")]] * 2, 1),
    # a writer section against a reader section: 2 lock orders.
    "reader vs writer": ([[("lock", "r"), (R, "x"), ("unlock", "r")],
                          [("lock", "w"), (W, "x"), ("unlock", "w")]], 2),
    # t0 takes the lock again (shared) after its writer section: t1's reader section goes
    # before or after the writer's.  The race of t1's acquisition is with the writer's
    # release, so the acquisition to reverse is the one that release ended, not t0's
    # latest (DPOR once reversed the latter and ran 1 execution).
    "writer then reader vs reader": (
        [[("lock", "w"), (W, "x"), ("unlock", "w"), ("lock", "r"), (R, "x"), ("unlock", "r")],
         [("lock", "r"), (R, "x"), ("unlock", "r")]], 2),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_one_execution_per_mazurkiewicz_trace(name):
    program, traces = PROGRAMS[name]
    sched = DporScheduler()
    n, sigs, pruned = _explore(program, sched)
    assert sched.exhausted
    assert (n, len(sigs), pruned) == (traces, traces, 0)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_source_dpor_covers_every_trace(name):
    program, traces = PROGRAMS[name]
    n, sigs, _ = _explore(program, DporScheduler(wakeup_trees=False))
    assert len(sigs) == traces and n >= traces


def test_unbounded_dfs_sees_the_same_traces():
    program, traces = PROGRAMS["2 writers 2 readers"]
    _, dfs, _ = _explore(program, DfsScheduler(None))
    _, dpor, _ = _explore(program, DporScheduler())
    assert dfs == dpor and len(dpor) == traces


def test_bounded_dpor_never_runs_more_than_bounded_dfs():
    from tdpsim.explore import explore, load_scenario
    sc = load_scenario("seed_2vcpu", {})
    got = []
    for b in (0, 1, 2):
        dpor = explore(sc, DporScheduler(preemption_bound=b))
        dfs = explore(sc, DfsScheduler(preemption_bound=b))
        assert dpor.exhausted and dfs.exhausted and dpor.states == dfs.states
        got.append((dpor.executions, dpor.pruned, dfs.executions))
    # DFS at bounds 1/2 grew 38 -> 44 and 670 -> 906 with the after-release points, and
    # 44 -> 46, 906 -> 994 with the point after srcu_read_lock (session 9).
    assert got == [(2, 1, 2), (6, 2, 46), (9, 2, 994)]


def test_dpor_runs_every_trace_bounded_dfs_reaches():
    """Soundness on a real scenario: every Mazurkiewicz trace a bounded DFS runs, DPOR runs
    too (a trace DPOR misses is a dependency its footprints do not see).  The larger
    scenarios are checked by ``benchmarks/bench_dpor.py --sound``."""
    from tdpsim.explore import load_scenario
    from tdpsim.explore.runner import explore_traces
    sc = load_scenario("seed_2vcpu", {})
    _, dfs = explore_traces(sc, DfsScheduler(2))
    _, dpor = explore_traces(sc, DporScheduler())
    assert set(dfs) <= set(dpor)
    assert (len(dfs), len(dpor)) == (8, 12)
