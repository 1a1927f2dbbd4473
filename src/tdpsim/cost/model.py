"""Charging: turn a phase's exact event counts into an estimated time.

Not a kernel file.  ``estimate`` multiplies each counter (see ``sim/metrics.py`` for the
names) by its parameter and returns the components, so reports can show *where* the time
goes, not just a total.  Components are serialised work on the vCPU/thread that caused it;
no overlap between vCPUs is assumed (an upper bound for multi-vCPU phases).

``translation`` estimates the steady-state side: given how much of the mapped memory huge
EPT leaves cover, the expected page-walk references per TLB miss and the TLB reach.
"""

from __future__ import annotations

from typing import Mapping

from .params import CostParams, DEFAULT_PARAMS

COMPONENTS = ("seamcall", "accept", "exits", "faults", "mmu_lock", "tlb", "kicks", "mapgpa")


def _accepts(counters: Mapping[str, int]) -> tuple[int, int]:
    """(4K, 2M) ACCEPTs that zeroed memory (status TDX_SUCCESS) from guest.accept.*."""
    n4 = n2 = 0
    for k, n in counters.items():
        if not k.startswith("guest.accept.") or not k.endswith(".TDX_SUCCESS"):
            continue
        size = k.split(".")[2]
        if size == "4K":
            n4 += n
        elif size == "2M":
            n2 += n
    return n4, n2


def _all_accept_calls(counters: Mapping[str, int]) -> int:
    return sum(n for k, n in counters.items() if k.startswith("guest.accept."))


def estimate(counters: Mapping[str, int], params: CostParams = DEFAULT_PARAMS,
             nr_vcpus: int = 1) -> dict[str, float]:
    """Estimated µs per component and ``total`` for one phase's counter deltas."""
    p = params
    seam = 0.0
    for k, n in counters.items():
        if k.startswith("seamcall.") and k.count(".") >= 1:
            leaf = k[len("seamcall."):]
            # "seamcall.MEM.PAGE.AUG" is the per-leaf total; ".TDX_..." entries are results.
            if ".TDX_" in leaf or leaf.split(".")[-1].startswith("TDX_"):
                continue
            seam += n * p.seamcall(leaf)
    n4, n2 = _accepts(counters)
    bytes_per_us = p.v("zero_gbps") * 1e3  # GB/s = 1e3 bytes/µs
    accept = _all_accept_calls(counters) * p.v("accept_tdcall_us") \
        + (n4 * 4096 + n2 * (2 << 20)) / bytes_per_us
    exits = counters.get("ept_violations", 0) * p.v("exit_roundtrip_us")
    faults = counters.get("pf.taken", 0) * p.v("fault_us")
    lock = counters.get("mmu_lock.write", 0) * p.v("write_lock_us") \
        + counters.get("mmu_lock.read", 0) * p.v("read_lock_us")
    tlb = counters.get("tlb.remote_flush_requests", 0) * p.v("tlb_flush_us") \
        + counters.get("tlb.remote_flush", 0) * nr_vcpus * p.v("tlb_flush_per_vcpu_us")
    kicks = counters.get("tdx.kicks", 0) * p.v("kick_us") \
        + counters.get("tdx.kick_exits", 0) * p.v("kick_per_vcpu_us")
    mapgpa = counters.get("guest.mapgpa_chunks", 0) * p.v("mapgpa_chunk_us")
    out = {"seamcall": seam, "accept": accept, "exits": exits, "faults": faults,
           "mmu_lock": lock, "tlb": tlb, "kicks": kicks, "mapgpa": mapgpa}
    out["total"] = sum(out.values())
    return out


def translation(huge_share: float, params: CostParams = DEFAULT_PARAMS) -> dict[str, float]:
    """Steady-state translation cost for a mapping mix: ``huge_share`` of the mapped guest
    memory is covered by 2M EPT leaves, the rest by 4K leaves."""
    p = params
    h = min(max(huge_share, 0.0), 1.0)
    refs = h * p.v("walk_refs_nested_2m") + (1 - h) * p.v("walk_refs_nested_4k")
    refs_pwc = h * p.v("walk_refs_nested_2m_pwc") + (1 - h) * p.v("walk_refs_nested_4k_pwc")
    reach = h * p.v("tlb_reach_2m_mib") + (1 - h) * p.v("tlb_reach_4k_mib")
    return {
        "walk_refs_per_miss": refs,
        "walk_refs_per_miss_pwc": refs_pwc,
        "walk_refs_native": p.v("walk_refs_native"),
        "walk_ns_per_miss_pwc": refs_pwc * p.v("walk_ref_ns"),
        "tlb_reach_mib": reach,
    }
