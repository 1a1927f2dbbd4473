"""Metrics: observe the model's event stream and read its counters.

Not a kernel file.  The model never imports this module: ``Metrics.observe`` is installed
as (part of) ``Kvm.tracer`` and ``snapshot`` reads the counters the kernel itself keeps
(``struct kvm_vm_stat``/``kvm_vcpu_stat``, mmu_lock acquisition counts) plus the TDX glue's
and the module's counters.  Everything is a flat ``{name: int}`` so that phases can be
diffed and reports need no knowledge of where a number came from.

Names (dotted, stable — reports, JSON and CSV use them):
  pages_4k / pages_2m / pages_1g            kvm_vm_stat.pages[] (current)
  mappings_2m / mappings_1g                 huge leaves installed (kvm_tdp_mmu_spte_changed)
  pf.taken / pf.fixed / pf.spurious / pf.retry / pf.emulate / pf.fast   RET_PF_* outcomes
  ept_violations                            exits the guest caused
  mmu_lock.read / mmu_lock.write            rwlock acquisitions
  tlb.remote_flush / tlb.remote_flush_requests / tlb.flush_events / tlb.td_flushes
  seamcall.<LEAF> / seamcall.<LEAF>.<STATUS>   SEAMCALLs by leaf and result
  tdx.*                                     glue counters (kicks, busy_retries, ...)
  track / td_epoch                          TDH.MEM.TRACK calls and the TD's epoch
  busy_retries                              all BUSY-driven retries (glue + guest)
  accept.4k_where_2m_possible / accept.4k_exits / accept.2m_exits
  nx.lpage_splits / nx.recovered
  hugepage_adjust.calls.{mirror,direct}     walk steps that consulted disallowed_hugepage_adjust
  hugepage_adjust.lowered.{mirror,direct}   faults whose goal it lowered, by root
  promote.opportunities                     faults whose goal met a mirror page table
  promote.tried / promote.done / promote.failed.<STATUS>   the promoting KVM's PROMOTEs
  promote.frames_left_small / promote.lost_2m_mib   opportunity frames not mapped huge now
  bugs / warnings
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from tdpsim.model.events import KvmBug, KvmFlushRemoteTlbs, KvmTdpMmuSpteChanged, KvmWarn
from tdpsim.model.spte import PT_PAGE_SIZE_MASK, SPTE_MMU_PRESENT_MASK

from .guest import Driver, mapped_level

_HUGE_LEAF = SPTE_MMU_PRESENT_MASK | PT_PAGE_SIZE_MASK


def _short_leaf(leaf: str) -> str:
    """"TDH.MEM.PAGE.AUG" → "seamcall.MEM.PAGE.AUG"; guest TDCALLs ("TDG.…") are counted
    under "tdcall." so they are never charged as SEAMCALLs."""
    parts = leaf.split(".")
    kind = "tdcall" if parts[0] == "TDG" else "seamcall"
    if parts[0] in ("TDH", "TDG"):
        parts = parts[1:]
    return kind + "." + ".".join(parts)


@dataclass
class Sample:
    """One point of the time series."""

    time_us: float
    phase: str
    pages_4k: int
    pages_2m: int
    pages_1g: int


class Metrics:
    """Event observer + counter reader for one run."""

    def __init__(self) -> None:
        self.mappings = [0, 0, 0, 0]  # by level
        self.flush_events = 0
        self.bug_events = 0
        self.warn_events = 0
        self.samples: list[Sample] = []

    # ----------------------------------------------------------------- event stream
    def observe(self, ev: Any) -> None:
        """The tracer: called for every model event, so keep it cheap."""
        t = type(ev)
        if t is KvmTdpMmuSpteChanged:
            new = ev.new_spte
            if ev.level > 1 and new & _HUGE_LEAF == _HUGE_LEAF \
                    and ev.old_spte & _HUGE_LEAF != _HUGE_LEAF:
                self.mappings[ev.level] += 1
        elif t is KvmFlushRemoteTlbs:
            self.flush_events += 1
        elif t is KvmBug:
            self.bug_events += 1
        elif t is KvmWarn:
            self.warn_events += 1

    # The classes ``observe`` counts: the model does not build the others for it (``traces``).
    observe.reads = frozenset(  # type: ignore[attr-defined]
        {KvmTdpMmuSpteChanged, KvmFlushRemoteTlbs, KvmBug, KvmWarn})

    # ----------------------------------------------------------------- counters
    def snapshot(self, d: Driver) -> dict[str, int]:
        kvm = d.kvm
        out: dict[str, int] = {
            "pages_4k": kvm.stat.pages_4k,
            "pages_2m": kvm.stat.pages_2m,
            "pages_1g": kvm.stat.pages_1g,
            "mappings_2m": self.mappings[2],
            "mappings_1g": self.mappings[3],
            "ept_violations": d.ept_violations,
            "accesses": d.accesses,
            "mmu_lock.read": kvm.mmu_lock.read_acquisitions,
            "mmu_lock.write": kvm.mmu_lock.write_acquisitions,
            "tlb.remote_flush": kvm.stat.remote_tlb_flush,
            "tlb.remote_flush_requests": kvm.stat.remote_tlb_flush_requests,
            "tlb.flush_events": self.flush_events,
            "nx.lpage_splits": kvm.stat.nx_lpage_splits,
            "nx.recovered": d.nx_recovered,
            "nx.recovery_runs": d.nx_recovery_runs,
            "tdp_mmu_pages": kvm.tdp_mmu_pages,
            "bugs": sum(n for (f, _), n in kvm.bug_counts.items() if not f.startswith("WARN ")),
            "warnings": sum(n for (f, _), n in kvm.bug_counts.items() if f.startswith("WARN ")),
        }
        pf = {"taken": 0, "fixed": 0, "spurious": 0, "retry": 0, "emulate": 0, "fast": 0}
        for v in kvm.vcpus:
            s = v.stat
            pf["taken"] += s.pf_taken
            pf["fixed"] += s.pf_fixed
            pf["spurious"] += s.pf_spurious
            pf["retry"] += s.pf_retry
            pf["emulate"] += s.pf_emulate
            pf["fast"] += s.pf_fast
        for k, n in pf.items():
            out[f"pf.{k}"] = n
        out.update(_hugepage_adjust_counters(d))
        busy = 0
        if d.tdx is not None:
            tdx, m, g = d.tdx, d.tdx.module, d.guest
            st = tdx.stats
            for k in ("kicks", "kick_exits", "busy_retries", "fault_busy", "accept_exits",
                      "local_retries", "accept_level_write_locks", "vcpu_enters",
                      "vcpu_enter_refused", "promote_attempts", "promote_successes",
                      "splits", "removes", "wbinvds"):
                out[f"tdx.{k}"] = getattr(st, k)
            out["tdx.accept_4k_where_2m_possible_first_touch"] = st.accept_4k_where_2m_possible
            out["track"] = m.track_count
            out["td_epoch"] = m.td_epoch
            out["tlb.td_flushes"] = m.tlb_flush_count
            for leaf, n in m.seamcalls.items():
                out[_short_leaf(leaf)] = n
            for (leaf, name), n in m.results.items():
                out[f"{_short_leaf(leaf)}.{name}"] = n
            out["accept.4k_where_2m_possible"] = g.accept_4k_where_2m_possible
            out["accept.4k_exits"] = g.accept_4k_exits
            out["accept.2m_exits"] = g.accept_2m_exits
            for (size, status), n in g.stats.accepts.items():
                out[f"guest.accept.{size}.{status}"] = n
            out["guest.size_mismatch_fallbacks"] = g.stats.size_mismatch_fallbacks
            out["guest.mapgpa_chunks"] = g.stats.mapgpa_chunks
            busy = st.busy_retries + st.fault_busy + g.stats.busy_retries
        out["busy_retries"] = busy
        return out

    def sample(self, time_us: float, phase: str, d: Driver) -> None:
        p = d.kvm.stat.pages
        self.samples.append(Sample(time_us, phase, p[0], p[1], p[2]))


def _hugepage_adjust_counters(d: Driver) -> dict[str, int]:
    """What the seed patch's decision did, and what the promotion opportunities became:
    a frame whose table is still there at the end lost its huge mapping to the refusal (or
    to a failed PROMOTE)."""
    kvm = d.kvm
    st = kvm.hugepage_adjust
    out = {"hugepage_adjust.calls.mirror": st.calls_mirror,
           "hugepage_adjust.calls.direct": st.calls_direct,
           "hugepage_adjust.lowered.mirror": st.lowered_mirror,
           "hugepage_adjust.lowered.direct": st.lowered_direct,
           "promote.opportunities": st.opportunities}
    root = kvm.vcpus[0].mirror_root if kvm.kvm_has_mirrored_tdp() else None
    small = [(lvl, gfn) for lvl, gfn in sorted(st.frames)
             if root is not None and mapped_level(kvm, root, gfn, False, False) < lvl]
    out["promote.frames_left_small"] = len(small)
    out["promote.lost_2m_mib"] = sum(2 * 512 ** (lvl - 2) for lvl, _ in small)
    if d.tdx is not None:
        ps = d.tdx.stats
        out["promote.tried"] = ps.promote_attempts
        out["promote.done"] = ps.promote_successes
        for status, n in ps.promote_failures.items():
            out[f"promote.failed.{status}"] = n
    return out


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Per-phase deltas (keys present in either)."""
    keys = sorted(set(after) | set(before))
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys}


def huge_coverage(counters: dict[str, int], memory_bytes: int) -> dict[str, float]:
    """Share of mapped memory, and of all guest memory, that huge leaves cover."""
    b4, b2, b1 = counters.get("pages_4k", 0), counters.get("pages_2m", 0) * 512, \
        counters.get("pages_1g", 0) * 512 * 512
    mapped = b4 + b2 + b1
    total = memory_bytes // 4096
    return {
        "mapped_mib": mapped * 4096 / (1 << 20),
        "huge_share_of_mapped": (b2 + b1) / mapped if mapped else 0.0,
        "huge_share_of_memory": (b2 + b1) / total if total else 0.0,
    }


@dataclass
class PhaseRecord:
    name: str
    kind: str
    start_us: float
    end_us: float
    counters: dict[str, int] = field(default_factory=dict)   # deltas over the phase
    skipped: bool = False
    stage: str = "kernel"                                     # build / firmware / kernel


def noop(_: Any) -> None:
    return None


def compose(*tracers: Optional[Any]):
    """One tracer calling several (None entries dropped)."""
    ts = [t for t in tracers if t is not None]
    if not ts:
        return None
    if len(ts) == 1:
        return ts[0]

    def tracer(ev: Any) -> None:
        for t in ts:
            t(ev)
    return tracer
