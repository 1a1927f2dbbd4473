"""Optimal DPOR explores exactly one execution per Mazurkiewicz trace.

The programs here are small enough to count their traces by hand; each thread is a list of
accesses to named variables, one scheduling point each, run by the real engine on a real VM.
Every execution's *trace signature* (per variable: the order of its writes and, for every
read, how many writes came before it) identifies its Mazurkiewicz trace, so "one execution
per trace" means: as many executions as distinct signatures, and that number equals the
count derived by hand."""

from __future__ import annotations

from math import factorial

import pytest

from tdpsim.explore import DfsScheduler, DporScheduler
from tdpsim.explore.engine import Engine, World
from tdpsim.model import sched as S
from tdpsim.model.policy import Policy
from tdpsim.model.vmm import VmConfig, create_vm


def _world(program: list[list[tuple]], log: dict) -> World:
    """``program[t]`` is thread t's accesses: ("r"|"w", var) or ("lock"|"unlock", mode)."""
    kvm = create_vm(VmConfig(), Policy())
    lock = kvm.mmu_lock

    def body(tid: int, ops: list[tuple]):
        def run() -> None:
            for op, arg in ops:
                if op == "lock":
                    lock.write_lock() if arg == "w" else lock.read_lock()
                elif op == "unlock":
                    lock.write_unlock() if arg == "w" else lock.read_unlock()
                else:
                    kvm.sched.point(S.TDCALL, ("var", arg), op == "w")
                    log.setdefault(arg, []).append((tid, op))
        return run

    threads = [(f"t{i}", body(i, ops)) for i, ops in enumerate(program)]
    return World(kvm=kvm, threads=threads, locks={lock.key: lock})


def _signature(log: dict) -> tuple:
    sig = []
    for var in sorted(log):
        writes, reads, seen = [], [], 0
        for tid, op in log[var]:
            if op == "w":
                writes.append(tid)
                seen += 1
            else:
                reads.append((tid, seen))
        sig.append((var, tuple(writes), tuple(sorted(reads))))
    return tuple(sig)


def _explore(program, sched) -> tuple[int, set, int]:
    sigs = set()
    n = 0
    while sched.new_execution():
        log: dict = {}
        res = Engine(_world(program, log), sched).run()
        sched.done(res)
        assert res.failure is None, res.failure
        n += 1
        if not res.pruned:
            sigs.add(_signature(log))
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
