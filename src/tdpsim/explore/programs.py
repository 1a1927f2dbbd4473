"""Toy programs for checking exploration strategies against numbers derived by hand.

A program is one list of operations per thread: ``("r"|"w", var)`` reads or writes a named
variable at a scheduling point of its own, ``("lock"|"unlock", "w"|"r")`` takes or drops the
VM's ``mmu_lock``.  The threads run in the real engine on a real (empty) VM, and every access
is logged, so an execution's *trace signature* — per variable the order of its writes and,
for each read, how many writes preceded it — names its Mazurkiewicz trace.
"""

from __future__ import annotations

from typing import Any

from tdpsim.model import sched as S
from tdpsim.model.policy import Policy
from tdpsim.model.vmm import VmConfig, create_vm

from .engine import World


def program_world(program: list[list[tuple]], log: dict) -> World:
    """A world running ``program``; accesses are appended to ``log[var]`` as (tid, op)."""
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


def trace_signature(log: dict) -> tuple:
    """The Mazurkiewicz trace of a logged execution (reads commute with reads)."""
    sig: list[Any] = []
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
