"""Fault-path throughput and memory of the core model (issue: core model benchmark).

Touches a guest of --gib GiB once per page at 4K (THP off on the host) and once per 2 MB
frame at 2M (THP on), through the full fault path (``kvm_mmu_do_page_fault``), and times a
bare 4-level walk over 512-entry tables doing the same installs in the same process.
Prints faults/s, the model-to-bare cost ratio, and bytes per mapped 4K SPTE (tracemalloc).
Times are CPU time of this process (``process_time``): on shared cores wall time mostly
measures the other processes.

    python benchmarks/bench_fault_path.py [--gib 4] [--accel] [--baseline SRC]

``--accel`` also runs the figures under the compiled model (``TDPSIM_ACCEL=1``, see
``tdpsim.accel``), ``--baseline SRC`` under another tree's ``src``; each in its own process,
one after the other in this run, each with its own bare walk.
Figures only; no assertions (goals: model 4K fault ≤ 3 µs and ≤ 15x the bare walk on the
way to ≤ 4x; ≤ 10 bytes per SPTE).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import tdpsim

from tdpsim.model.mmu_fault import ept_violation_error_code, kvm_mmu_do_page_fault
from tdpsim.model.policy import Policy
from tdpsim.model.spte import PG_LEVEL_2M, PG_LEVEL_4K
from tdpsim.model.vmm import VmConfig, create_vm

NONPRESENT = 1 << 63
ACCEL_ENV = "TDPSIM_ACCEL"


def compiled() -> bool:
    try:
        from tdpsim import accel
    except ImportError:  # a baseline tree from before the compiled build
        return False
    return accel.active()


def model_touch(gib: int, level: int) -> tuple[float, int, object]:
    kvm = create_vm(VmConfig(mem_bytes=gib << 30, host_page_level=level), Policy())
    vcpu = kvm.vcpus[0]
    err = ept_violation_error_code(write=True)
    step = 1 if level == PG_LEVEL_4K else 512
    npages = (gib << 30) >> 12
    t0 = time.process_time()
    for gfn in range(0, npages, step):
        kvm_mmu_do_page_fault(vcpu, gfn << 12, err)
    dt = time.process_time() - t0
    return dt, npages // step, kvm


def bare_touch(gib: int) -> tuple[float, int]:
    """A minimal 4-level walk: lists of 512 entries, allocate on the way down."""
    root = [None] * 512
    npages = (gib << 30) >> 12
    t0 = time.process_time()
    for gfn in range(npages):
        table = root
        for shift in (27, 18, 9):
            i = (gfn >> shift) & 511
            child = table[i]
            if child is None:
                child = table[i] = [None] * 512
            table = child
        table[gfn & 511] = (gfn << 12) | 0xB37
    return time.process_time() - t0, npages


def bytes_per_spte(gib: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _, n, kvm = model_touch(gib, PG_LEVEL_4K)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kvm
    return (after - before) / n


def figures(gib: int, mem_gib: int) -> None:
    dt4, n4, _ = model_touch(gib, PG_LEVEL_4K)
    dt2, n2, _ = model_touch(gib, PG_LEVEL_2M)
    dtb, nb = bare_touch(gib)
    per4, per2, perb = dt4 / n4 * 1e6, dt2 / n2 * 1e6, dtb / nb * 1e6
    model = "compiled (tdpsim.accel)" if compiled() else "pure Python"
    print(f"guest {gib} GiB, model {model}, {tdpsim.__file__}")
    print(f"model 4K faults : {n4:>9} in {dt4:7.2f} s = {n4 / dt4:>10,.0f} faults/s ({per4:.2f} us each)")
    print(f"model 2M faults : {n2:>9} in {dt2:7.2f} s = {n2 / dt2:>10,.0f} faults/s ({per2:.2f} us each)")
    print(f"bare 4-level walk: {nb:>9} in {dtb:7.2f} s = {nb / dtb:>10,.0f} installs/s ({perb:.2f} us each)")
    print(f"ratio model 4K / bare walk: {per4 / perb:.1f}x  (goal <= 15x, then <= 4x; 4K fault goal <= 3 us)")
    print(f"bytes per mapped 4K SPTE ({mem_gib} GiB, tracemalloc): "
          f"{bytes_per_spte(mem_gib):.2f}  (goal <= 10; hardware needs 8)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=int, default=4)
    parser.add_argument("--mem-gib", type=int, default=1,
                        help="guest size for the tracemalloc measurement (slower)")
    parser.add_argument("--accel", action="store_true",
                        help="also measure the compiled model (needs its build)")
    parser.add_argument("--baseline", metavar="SRC", help="also measure another tree's src")
    args = parser.parse_args()
    if not args.accel and not args.baseline:
        figures(args.gib, args.mem_gib)
        return
    here = str(Path(__file__).resolve().parent.parent / "src")
    runs = [(here, False)] + [(here, True)] * args.accel \
        + [(args.baseline, False)] * bool(args.baseline)
    for src, accel in runs:
        env = {k: v for k, v in os.environ.items() if k != ACCEL_ENV}
        env.update(PYTHONPATH=src, **({ACCEL_ENV: "1"} if accel else {}))
        subprocess.run([sys.executable, __file__, "--gib", str(args.gib), "--mem-gib",
                        str(args.mem_gib)], env=env, check=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
