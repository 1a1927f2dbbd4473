"""A recorded KVM selftest's trace against the model's run of the same selftest
(:mod:`tdpsim.scenarios.selftests`), VM by VM.

The selftest runs one VM after the other; each vCPU runs in its own thread (its own pid
in the trace) while the main thread changes memslots.  :func:`vm_segments` cuts the
trace into the VMs: the first, whose vCPU runs on the main thread, up to its teardown
(the first zap), then one segment per vCPU thread, from that thread's first event to
its last one plus what the main thread did in between; the main thread's events after
the vCPU's last one are ``kvm_vm_free``'s teardown, which the model does not run (the
model's streams are cut the same way, :func:`by_thread`).  Each
segment is kept per thread: how the vCPU's faults interleave with the main thread's
zaps is timing, the order within each thread is not.

:func:`comparable` reduces a segment (the kernel's records or the model's events) to
what does not depend on timing: the events of one gfn window (the selftest's test
region), canonical as in :mod:`tdpsim.kvmcheck.oracle`, without

* ``kvm_mmu_spte_requested`` and consecutive repeats of an event: a vCPU faulting while
  a memslot is INVALID retries, and an MMIO read in a loop faults again, as often as the
  main thread takes;
* an MMIO SPTE rewritten as an MMIO SPTE of a newer generation: whether the vCPU made
  it while the memslot swap was still in progress is timing too.

So what must agree is each fault's address and error code and every change of a real
SPTE, table and shadow page, in order.  Pure.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, TypeVar

from ..model.profile import KernelProfile
from ..model.spte import SPTE_MMU_PRESENT_MASK
from ..trace import records as tr
from ..trace.emit import model_event_to_record
from ..trace.parser import parse_trace
from .oracle import SpteBits, canonical

__all__ = ["vm_segments", "by_thread", "comparable", "model_records"]

T = TypeVar("T")


def vm_segments(lines: Iterable[str], *, filename: str = "<trace>"
                ) -> list[dict[str, list[tr.TraceRecord]]]:
    """One entry per VM, its records by thread (``"main"``, ``"vcpu"``): first the VM
    whose vCPU runs on the main thread, up to its first zap, then one per vCPU thread.
    The trace's first event must be the main thread's (true of set_memory_region_test
    and pre_fault_memory_test; a selftest that starts in a vCPU thread is cut wrongly)."""
    recs = list(parse_trace(lines, filename=filename))
    if not recs:
        return []
    main = recs[0].pid
    first_other = next((i for i, r in enumerate(recs) if r.pid != main), len(recs))
    head = recs[:first_other]
    zap = next((i for i, r in enumerate(head) if _is_zap(r)), len(head))
    segments: list[list[tuple[str, tr.TraceRecord]]] = []
    vcpu: Optional[int] = None
    for r in recs[first_other:]:
        if r.pid != main and r.pid != vcpu:
            segments.append([])
            vcpu = r.pid
        segments[-1].append(("main" if r.pid == main else "vcpu", r))
    return [{"main": head[:zap]}] + [by_thread(s) for s in segments]


def _is_zap(r: tr.TraceRecord) -> bool:
    return isinstance(r, (tr.KvmMmuPrepareZapPage, tr.KvmMmuZapAllFast)) or (
        isinstance(r, tr.KvmTdpMmuSpteChanged) and r.old_spte & SPTE_MMU_PRESENT_MASK
        and not r.new_spte & SPTE_MMU_PRESENT_MASK)


def by_thread(items: Sequence[tuple[str, T]]) -> dict[str, list[T]]:
    """A VM's (thread, event) sequence by thread, without the main thread's events after
    the vCPU's last one (``kvm_vm_free``: the model runs no teardown)."""
    last = max((i for i, (th, _) in enumerate(items) if th == "vcpu"), default=len(items) - 1)
    out: dict[str, list[T]] = {}
    for th, e in items[:last + 1]:
        out.setdefault(th, []).append(e)
    return out


def model_records(events: Iterable[object]) -> list[tr.TraceRecord]:
    """The model's events as trace records (what its ``--trace`` would print)."""
    out = []
    for e in events:
        rec = model_event_to_record(e, comm="m", pid=0, cpu=0, timestamp="0")
        if rec is not None:
            out.append(rec)
    return out


def comparable(recs: Iterable[tr.TraceRecord], bits: SpteBits, profile: KernelProfile,
               gfns: Optional[range] = None) -> list[tuple]:
    """The timing-free form of a segment (see the module docstring); ``gfns`` limits it
    to events on that gfn window."""
    out: list[tuple] = []
    special = (profile.SHADOW_NONPRESENT_VALUE, profile.FROZEN_SPTE)
    for r in recs:
        if isinstance(r, tr.KvmMmuSpteRequested):
            continue
        if isinstance(r, tr.KvmTdpMmuSpteChanged) and _mmio_to_mmio(r, special):
            continue
        gfn = r.fault_address >> 12 if isinstance(r, tr.KvmPageFault) else getattr(r, "gfn", None)
        if gfns is not None and (gfn is None or gfn not in gfns):
            continue
        c = canonical(r, bits)
        if c is not None and (not out or out[-1] != c):
            out.append(c)
    return out


def _mmio_to_mmio(r: tr.KvmTdpMmuSpteChanged, special: tuple[int, int]) -> bool:
    """Neither side present, empty nor frozen: one MMIO SPTE replaced by another."""
    return (r.old_spte not in special and r.new_spte not in special
            and not (r.old_spte | r.new_spte) & SPTE_MMU_PRESENT_MASK)
