"""Simulated td-boot at several guest sizes: wall time, peak memory, and how cost grows.

Each size runs in a fresh interpreter (so peak RSS is that run's), under the ``upstream``
preset with the built-in td-boot workload resized with ``Workload.with_vm``.  The boot
touches a fixed amount of guest memory (EDK2's 4K accepts and its ≈17600 4K re-accepts of
bounce buffers below 2 GiB, the kernel's 2288 MiB up to login), so the per-size growth shows what scales with *guest size* rather than touched
memory: memslot metadata (lpage_info, memory-attribute MIXED scan).  ``--touch-all``
instead makes the kernel accept all of guest memory lazily at 2M (accept_memory=eager),
which shows the cost per touched GiB.

    python benchmarks/bench_td_boot.py                 # 4, 64, 1024 GiB
    python benchmarks/bench_td_boot.py --sizes 4 64 --touch-all
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
from tdpsim.sim import builtin_workload, simulate
gib, touch_all = float(sys.argv[1]), sys.argv[2] == "1"
wl = builtin_workload("td-boot").with_vm(memory_gib=gib)
if touch_all:
    raw = dict(wl.raw)
    phases = [dict(p) for p in raw["phases"]]
    for p in phases:
        if p.get("name") == "kernel-boot":
            # everything still unaccepted above 16 MiB: minus the swiotlb and EDK2's
            # 46 MiB at the top of low memory
            p["mib"] = int(gib * 1024) - 16 - 64 - 46
    raw["phases"] = phases
    from tdpsim.sim.workload import parse_workload
    wl = parse_workload(raw, "td-boot (touch all)")
t0 = time.perf_counter()
r = simulate(wl, "upstream")
t1 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
mapped = (r.totals["pages_4k"] * 4096 + r.totals["pages_2m"] * (2 << 20)) / (1 << 30)
print(json.dumps({"gib": gib, "wall_s": t1 - t0, "peak_rss_mib": rss, "status": r.status,
                  "mapped_gib": mapped, "steps": r.steps,
                  "pages_2m": r.totals["pages_2m"], "ept_violations": r.totals["ept_violations"]}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[4, 64, 1024])
    ap.add_argument("--touch-all", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for gib in args.sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(gib),
                              "1" if args.touch_all else "0"],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'GiB':>6} {'wall s':>8} {'peak MiB':>9} {'mapped GiB':>10} {'2M maps':>8} "
          f"{'exits':>7} {'s/mapped GiB':>12}  status")
    for r in rows:
        per = r["wall_s"] / r["mapped_gib"] if r["mapped_gib"] else float("nan")
        print(f"{r['gib']:>6g} {r['wall_s']:>8.2f} {r['peak_rss_mib']:>9.0f} "
              f"{r['mapped_gib']:>10.2f} {r['pages_2m']:>8} {r['ept_violations']:>7} "
              f"{per:>12.3f}  {r['status']}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"wall time ×{b['wall_s'] / a['wall_s']:.2f} for guest memory "
              f"×{b['gib'] / a['gib']:g} and touched memory ×{b['mapped_gib'] / a['mapped_gib']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
