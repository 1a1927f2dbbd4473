"""Explorer throughput and reduction (prints figures; no assertions).

  python benchmarks/bench_explore.py [--seconds 5]

1. executions/s and steps/s (states = scheduling steps) on the seed scenario, random and PCT,
   one core; also on the RecordingExternalOps variant (KVM side only, no TDX module).  Each
   line runs twice in this process: re-running the setup per execution ("fresh") and
   restoring it from the per-process snapshot (the default), with the ratio.  "per core" is
   executions per second of this process's CPU time (the machine may be shared; wall-clock
   exec/s is printed beside it).
DPOR against bounded DFS, the frontrun comparison and split campaigns: bench_dpor.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from tdpsim.explore import PctScheduler, RandomScheduler, explore, load_scenario


def rate(name: str, params: dict, sched_factory, seconds: float) -> None:
    sc = load_scenario(name, params)
    out = []
    for snap in (False, True):
        cpu = time.process_time()
        rep = explore(dataclasses.replace(sc, setup_snapshot=snap), sched_factory(),
                      time_limit=seconds, stop_on_failure=False)
        out.append((rep, rep.executions / max(1e-9, time.process_time() - cpu)))
    (fresh, _), (rep, per_core) = out
    print(f"  {name:15s} {params.get('tdx.external_ops', 'tdx'):9s} "
          f"{type(sched_factory()).__name__:15s} {rep.executions:7d} exec "
          f"{per_core:8.0f} exec/s/core (wall {rep.executions_per_second:6.0f}) "
          f"{rep.steps_per_second:10.0f} steps/s "
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


if __name__ == "__main__":
    main()
