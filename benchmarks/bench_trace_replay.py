"""Benchmark: parse + replay throughput (lines/s) and memory of ``tdpsim.trace.replay``.

A streaming generator writes a self-consistent trace of a direct root to a temporary
file: per 2M frame, a table link, 16 4K faults (kvm_page_fault, spte_requested,
spte_changed, set_spte), a promotion to 2M (prepare_zap_page + 512 frozen children), an
eager split back to 4K, and a zap of the table (512 frozen children again), plus foreign
``sched_switch`` lines.  It replays without anomalies, so the figures are those of the
common path.  Two sizes (a quarter and the full size) are replayed to show that memory
stays flat as the file grows.  Figures only, no assertions.

    PYTHONPATH=src python benchmarks/bench_trace_replay.py [--mb 64] [--big] [--reference]

``--big`` writes >= 1 GB (takes a few minutes).  ``--reference`` also times the reference
paths (the parser without its fast path, and replay by feeding records), on the same file.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc

from tdpsim.model import spte as S
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.trace import TraceParser
from tdpsim.trace.replay import ReplayOptions, _replay, replay_trace

EPT = S.kvm_mmu_set_ept_masks(DEFAULT_PROFILE)  # the masks kvm_intel installs

NP = DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE
FZ = DEFAULT_PROFILE.FROZEN_SPTE
_MT = (S.MTRR_TYPE_WRBACK << S.VMX_EPT_MT_EPTE_SHIFT) | S.VMX_EPT_IPAT_BIT


def _leaf(level: int) -> int:
    # pfn 0: the pfn bits are disjoint from the flags, so leaf(pfn) = base | pfn << 12
    return S.make_spte(EPT, level=level, ad_disabled=False, pte_access=S.ACC_ALL, pfn=0,
                       old_spte=NP, prefetch=False, host_writable=True,
                       nx_huge_page_enabled=False, mt_mask=_MT)


LEAF4K, LEAF2M = _leaf(1), _leaf(2)
TABLE = S.make_nonleaf_spte(EPT, 0, False)
SPLIT4K = S.make_small_spte(EPT, LEAF2M, 1, 0, S.ACC_ALL, False)
OTHER = ("          <idle>-0     [001] 1000.000001: sched_switch: prev_comm=swapper/1 "
         "prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=qemu next_pid=4100 "
         "next_prio=120\n")


def generate(path: str, target_bytes: int) -> int:
    """Write frames until the file reaches ``target_bytes``; returns the line count."""
    clock = [1_000_000_000]

    def hdr(vcpu: bool) -> str:
        ns = clock[0]
        clock[0] += 1000
        who = "       CPU 0/KVM-4100  [000]" if vcpu else " qemu-system-x86-4000  [001]"
        return f"{who} {ns // 1_000_000_000}.{(ns // 1000) % 1_000_000:06d}: "

    def changed(vcpu: bool, gfn: int, level: int, old: int, new: int) -> str:
        return (f"{hdr(vcpu)}kvm_tdp_mmu_spte_changed: as id 0 gfn {gfn:x} level {level} "
                f"old_spte {old:x} new_spte {new:x}\n")

    def page(vcpu: bool, event: str, gfn: int, level: int, new: str) -> str:
        return (f"{hdr(vcpu)}{event}: sp gen 0 gfn {gfn:x} l{level} 8-byte q0 direct wux "
                f"nxe ad root 0 sync{new}\n")

    next_pt = [0x100000]

    def pt() -> int:
        next_pt[0] += 1
        return next_pt[0]

    lines = 0
    with open(path, "w", buffering=1 << 20) as f:
        w = f.write
        w("cpus=2\n")
        w(page(False, "kvm_mmu_get_page", 0, 4, " new"))
        lines += 2
        l3 = pt()
        w(page(True, "kvm_mmu_get_page", 0, 3, " new"))
        w(changed(True, 0, 4, NP, TABLE | l3 << 12))
        lines += 2
        l2 = 0
        frame = 0
        while f.tell() < target_bytes:
            base = frame * 512
            out = []
            if frame % 512 == 0:
                l2 = pt()
                out.append(page(True, "kvm_mmu_get_page", base, 2, " new"))
                out.append(changed(True, base, 3, NP, TABLE | l2 << 12))
            l1 = pt()
            l2_at = (l2 << 12) + (frame % 512) * 8
            for i in range(16):
                gfn = base + i * 7
                pfn = 0x2000000 + gfn
                out.append(f"{hdr(True)}kvm_page_fault: vcpu 0 rip 0xfff0 address "
                           f"0x{gfn << 12:016x} error_code 0x182\n")
                out.append(f"{hdr(True)}kvm_mmu_spte_requested: gfn {gfn:x} pfn {pfn:x} level 1\n")
                if i == 0:
                    out.append(page(True, "kvm_mmu_get_page", base, 1, " new"))
                    out.append(changed(True, base, 2, NP, TABLE | l1 << 12))
                spte = LEAF4K | pfn << 12
                out.append(changed(True, gfn, 1, NP, spte))
                out.append(f"{hdr(True)}kvm_mmu_set_spte: gfn {gfn:x} spte {spte:x} (rwxu) "
                           f"level 1 at {(l1 << 12) + (gfn - base) * 8:x}\n")
                out.append(OTHER)
            # promotion to 2M (shared lock: all 512 children frozen)
            huge = LEAF2M | (0x2000000 + base) << 12
            out.append(changed(True, base, 2, TABLE | l1 << 12, huge))
            out.append(page(True, "kvm_mmu_prepare_zap_page", base, 1, ""))
            for i in range(512):
                old = LEAF4K | (0x2000000 + base + i) << 12 if i % 7 == 0 and i < 112 else NP
                out.append(changed(True, base + i, 1, old, FZ))
            out.append(f"{hdr(True)}kvm_mmu_set_spte: gfn {base:x} spte {huge:x} (rwxu) "
                       f"level 2 at {l2_at:x}\n")
            # eager split back to 4K (VMM thread)
            l1 = pt()
            out.append(page(False, "kvm_mmu_get_page", base, 1, " new"))
            out.append(changed(False, base, 2, huge, TABLE | l1 << 12))
            out.append(f"{hdr(False)}kvm_mmu_split_huge_page: gfn {base:x} spte {huge:x} "
                       f"level 2 errno 0\n")
            # zap the table (write lock: the 512 present children frozen)
            out.append(changed(False, base, 2, TABLE | l1 << 12, NP))
            out.append(page(False, "kvm_mmu_prepare_zap_page", base, 1, ""))
            for i in range(512):
                out.append(changed(False, base + i, 1,
                                   SPLIT4K | (0x2000000 + base + i) << 12, FZ))
            w("".join(out))
            lines += len(out)
            frame += 1
    return lines


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: str, mem: bool, reference: bool = False) -> None:
    size = os.path.getsize(path)
    p = TraceParser(path)
    t0 = time.perf_counter()
    for _ in p:
        pass
    t_parse = time.perf_counter() - t0
    n = p.stats.lines
    t0 = time.perf_counter()
    r = replay_trace(path, ReplayOptions())
    t_replay = time.perf_counter() - t0
    print(f"  {size / 1e6:8.1f} MB {n:>10,} lines | parse only {n / t_parse:>9,.0f} lines/s | "
          f"parse+replay {n / t_replay:>9,.0f} lines/s ({t_replay:.1f} s) | "
          f"anomalies {r.anomaly_total} | pages {r.pages} | peak RSS {_rss_mb():.0f} MB")
    if reference:
        p = TraceParser(path)
        p._use_reference = True
        t0 = time.perf_counter()
        for _ in p:
            pass
        t_parse_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        r_ref = _replay(path, ReplayOptions(), skip_bad=False, filename=None,
                        resolve_lines=True, fast=False)
        t_replay_ref = time.perf_counter() - t0
        same = "same result" if r_ref.to_dict() == r.to_dict() else "RESULTS DIFFER"
        print(f"  {'reference':>8}    {'':>10}       | parse only {n / t_parse_ref:>9,.0f} lines/s | "
              f"parse+replay {n / t_replay_ref:>9,.0f} lines/s ({t_replay_ref:.1f} s) | {same} | "
              f"speed-up parse x{t_parse_ref / t_parse:.2f}, parse+replay "
              f"x{t_replay_ref / t_replay:.2f}")
    if mem:
        tracemalloc.start()
        replay_trace(path, ReplayOptions())
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  {'':8}    tracemalloc peak of parse+replay: {peak / 1024:,.0f} KiB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64, help="size of the full trace in MB")
    ap.add_argument("--big", action="store_true", help="generate >= 1 GB (1100 MB)")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="skip the (slow) tracemalloc passes")
    ap.add_argument("--reference", action="store_true",
                    help="also time the reference (no fast path) parser and replay")
    args = ap.parse_args(argv)
    full = (1100 if args.big else args.mb) * 1_000_000
    with tempfile.TemporaryDirectory() as d:
        for size in (full // 4, full):
            path = os.path.join(d, f"trace_{size}.txt")
            t0 = time.perf_counter()
            lines = generate(path, size)
            print(f"generated {lines:,} lines ({os.path.getsize(path) / 1e6:.1f} MB) in "
                  f"{time.perf_counter() - t0:.1f} s")
            measure(path, mem=not args.no_tracemalloc, reference=args.reference)
            os.unlink(path)
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
