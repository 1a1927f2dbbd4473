"""Explorer throughput and reduction (prints figures; no assertions).

  python benchmarks/bench_explore.py [--seconds 5]

1. executions/s and steps/s (states = scheduling steps) on the seed scenario, random and PCT,
   one core; also on the RecordingExternalOps variant (KVM side only, no TDX module).  Each
   line runs twice in this process: re-running the setup per execution ("fresh") and
   restoring it from the per-process snapshot (the default), with the ratio.
2. executions needed by bounded DFS vs DPOR to exhaust the 2-vCPU seed scenario.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from tdpsim.explore import (
    DfsScheduler, DporScheduler, PctScheduler, RandomScheduler, explore, load_scenario,
)


def rate(name: str, params: dict, sched_factory, seconds: float) -> None:
    sc = load_scenario(name, params)
    out = []
    for snap in (False, True):
        rep = explore(dataclasses.replace(sc, setup_snapshot=snap), sched_factory(),
                      time_limit=seconds, stop_on_failure=False)
        out.append(rep)
    fresh, rep = out
    print(f"  {name:15s} {params.get('tdx.external_ops', 'tdx'):9s} "
          f"{type(sched_factory()).__name__:15s} {rep.executions:7d} exec "
          f"{rep.executions_per_second:8.0f} exec/s {rep.steps_per_second:10.0f} steps/s "
          f"({rep.steps / max(1, rep.executions):.0f} steps/exec, {len(rep.states)} states)  "
          f"fresh setup {fresh.executions_per_second:6.0f} exec/s "
          f"(x{rep.executions_per_second / max(1e-9, fresh.executions_per_second):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    print("== throughput (one core) ==")
    for params in ({"policy.mirror_promotion": "disallowed"},
                   {"policy.mirror_promotion": "disallowed", "tdx.external_ops": "recording"}):
        for factory in (lambda: RandomScheduler(1, 10**9), lambda: PctScheduler(1, 3, 10**9)):
            rate("seed_promotion", params, factory, args.seconds)
            rate("seed_2vcpu", params, factory, args.seconds)
    print("== DFS vs DPOR, seed_2vcpu (policy disallowed), until exhausted ==")
    sc = load_scenario("seed_2vcpu", {"policy.mirror_promotion": "disallowed"})
    for label, sched in (("DPOR (unbounded)", DporScheduler(100000)),
                         ("DFS pb=1", DfsScheduler(1, 100000)),
                         ("DFS pb=2", DfsScheduler(2, 100000)),
                         ("DFS pb=3", DfsScheduler(3, 100000)),
                         ("DFS unbounded", DfsScheduler(None, 20000))):
        # (DFS unbounded is cut off by the 60 s limit)
        t = time.perf_counter()
        rep = explore(sc, sched, time_limit=30)
        print(f"  {label:18s} {rep.executions:7d} executions  exhausted={rep.exhausted!s:5s} "
              f"states={len(rep.states)} pruned={rep.pruned} {time.perf_counter() - t:.1f}s")
    sc = load_scenario("seed_promotion", {"policy.mirror_promotion": "disallowed"})
    print("== DFS vs DPOR, seed_promotion (3 threads, disallowed) ==")
    for label, sched in (("DPOR (unbounded)", DporScheduler(20000)),
                         ("DFS pb=2", DfsScheduler(2, 20000))):
        t = time.perf_counter()
        rep = explore(sc, sched, time_limit=30)
        print(f"  {label:18s} {rep.executions:7d} executions  exhausted={rep.exhausted!s:5s} "
              f"states={len(rep.states)} pruned={rep.pruned} {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
