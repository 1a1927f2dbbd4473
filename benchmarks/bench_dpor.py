"""DPOR: reduction against bounded DFS, optimality on counted programs, the frontrun DPOR
engine on the same program, and split campaigns on local processes and Ray (prints figures;
no assertions).

  python benchmarks/bench_dpor.py [--cap 30] [--ray] [--skip-builtins]
  python benchmarks/bench_dpor.py --exhaust [--cap 300] [SCENARIO ...]  # section 4 only
  python benchmarks/bench_dpor.py --sound [--bound 1] [SCENARIO ...]  # section 5 only

1. Toy programs whose Mazurkiewicz traces are counted independently (unbounded DFS over
   every interleaving, distinct trace signatures): our optimal DPOR's executions and
   executions/s beside the PyPI ``frontrun`` DPOR engine (if installed) on the same program,
   ratios from this run.
2. Every built-in scenario: optimal DPOR, the split (eager_depth=2) DPOR campaigns run,
   source-DPOR, DFS at preemption bounds 1 and 2, and bounded DPOR at bounds 1 and 2 with
   the final states it reaches against DFS's at the same bound; each run capped at --cap
   seconds (a capped run says so: its count is then a lower bound).
3. seed_promotion as a DPOR campaign: serial, --jobs 2, and (with --ray) a local Ray
   cluster with 1 and 2 workers: wall time, speed-up, and whether executions, states,
   traces and failures are identical to the serial run.
4. ``--exhaust``: optimal DPOR on every built-in scenario with no other work, each run capped
   at --cap seconds of wall time: executions, sleep-blocked executions, CPU seconds,
   exhausted or not, final states and distinct failures (the issue-14 "clean under exhaustive
   DPOR" table).
5. ``--sound``: bounded DFS at --bound against optimal DPOR on each scenario, both to the
   end: the Mazurkiewicz traces (``dpor.trace_of``) DFS reaches that DPOR never ran.  DPOR
   is sound when that number is 0 (a missing trace means a dependency DPOR cannot see).
"""

from __future__ import annotations

import argparse
import time

from tdpsim.explore import DfsScheduler, DporScheduler, builtin_names, explore, load_scenario
from tdpsim.explore.campaign import CampaignSpec, run_campaign
from tdpsim.explore.engine import Engine
from tdpsim.explore.runner import explore_traces
from tdpsim.explore.programs import program_world, trace_signature

W, R = "w", "r"
PROGRAMS = {
    "2 threads x=x+1": [[(R, "x"), (W, "x")]] * 2,
    "3 threads x=x+1": [[(R, "x"), (W, "x")]] * 3,
    "2 writers 2 readers": [[(W, "x")], [(W, "x")], [(R, "x")], [(R, "x")]],
}


def _run_program(program, sched) -> tuple[int, int, float]:
    """(executions, distinct traces, seconds)."""
    sigs = set()
    n = 0
    t = time.perf_counter()
    while sched.new_execution():
        log: dict = {}
        res = Engine(program_world(program, log), sched).run()
        sched.done(res)
        n += 1
        if not res.pruned:
            sigs.add(trace_signature(log))
    return n, len(sigs), time.perf_counter() - t


def _frontrun(program) -> tuple[int, float] | None:
    try:
        import frontrun
        from frontrun._cooperative import patch_locks, unpatch_locks
    except ImportError:
        return None
    patch_locks()  # frontrun's thread scheduler needs its cooperative locks while it runs
    try:
        return _frontrun_explore(frontrun, program)
    finally:
        unpatch_locks()  # they would break multiprocessing (the campaigns below)


def _frontrun_explore(frontrun, program) -> tuple[int, float]:
    class State:
        def __init__(self) -> None:
            self.x = 0

    def worker(ops):
        def run(s):  # the same accesses, as Python attribute reads and writes
            for op, _ in ops:
                if op == R:
                    _ = s.x
                else:
                    s.x = 1
        return run

    def go():
        return frontrun.explore(State, [worker(ops) for ops in program], lambda s: True,
                                preemption_bound=None, stop_on_first=False,
                                detect_io=False, reproduce_on_failure=0)

    go()  # warm-up: the first call patches and traces
    t = time.perf_counter()
    r = go()
    return r.num_explored, time.perf_counter() - t


def programs() -> None:
    print("== counted programs: optimal DPOR vs the frontrun DPOR engine (same run) ==")
    for name, program in PROGRAMS.items():
        _, traces, _ = _run_program(program, DfsScheduler(None))
        _run_program(program, DporScheduler())  # warm-up, like frontrun's
        n, seen, dt = _run_program(program, DporScheduler())
        line = (f"  {name:20s} traces {traces:4d} | tdpsim DPOR {n:4d} exec "
                f"({seen} distinct) {n / dt:8.0f} exec/s")
        fr = _frontrun(program)
        if fr is None:
            line += " | frontrun not installed"
        else:
            fn, fdt = fr
            line += (f" | frontrun {fn:4d} exec {fn / fdt:7.0f} exec/s | executions x{fn / n:.2f}"
                     f" fewer, exec/s x{(n / dt) / (fn / fdt):.1f}, wall x{fdt / dt:.1f}")
        print(line, flush=True)


def _cell(rep) -> str:
    mark = "" if rep.exhausted else "+ (capped)"
    return f"{rep.executions}{mark}"


def builtins(cap: float) -> None:
    print(f"== built-in scenarios, executions to exhaust (cap {cap:.0f} s per run) ==")
    print(f"  {'scenario':15s} {'DPOR':>8s} {'pruned':>6s} {'split2':>8s} {'source':>10s} "
          f"{'DFS pb=1':>14s} {'DFS pb=2':>14s}  {'DFS2/DPOR':12s} {'bDPOR1':>7s} "
          f"{'bDPOR2':>7s} states(bDPOR/DFS at 1, 2)")
    for name in builtin_names():
        sc = load_scenario(name, {})
        reps = {}
        for label, sched in (("dpor", DporScheduler(10**6)),
                             ("split", DporScheduler(10**6, eager_depth=2)),
                             ("source", DporScheduler(10**6, wakeup_trees=False)),
                             ("dfs1", DfsScheduler(1, 10**6)),
                             ("dfs2", DfsScheduler(2, 10**6)),
                             ("bdpor1", DporScheduler(10**6, preemption_bound=1)),
                             ("bdpor2", DporScheduler(10**6, preemption_bound=2))):
            reps[label] = explore(sc, sched, time_limit=cap)
        d, f2 = reps["dpor"], reps["dfs2"]
        ratio = f"x{f2.executions / d.executions:.1f}" + ("" if d.exhausted and f2.exhausted
                                                          else " (bound)")
        b1, b2 = reps["bdpor1"], reps["bdpor2"]
        print(f"  {name:15s} {_cell(d):>8s} {d.pruned:6d} {_cell(reps['split']):>8s} "
              f"{_cell(reps['source']):>10s} {_cell(reps['dfs1']):>14s} "
              f"{_cell(f2):>14s}  {ratio:12s} {_cell(b1):>7s} {_cell(b2):>7s} "
              f"{len(b1.states)}/{len(reps['dfs1'].states)} {len(b2.states)}/{len(f2.states)}",
              flush=True)


def _same(a, b) -> bool:
    return (a.executions, a.pruned, a.states, a.traces, a.failures) == \
        (b.executions, b.pruned, b.states, b.traces, b.failures)


def campaigns(use_ray: bool) -> None:
    print("== seed_promotion DPOR campaign (split depth 2): serial vs workers ==")
    spec = CampaignSpec("seed_promotion", {}, "dpor", executions=10**6,
                        stop_on_failure=False)
    t = time.perf_counter()
    serial = run_campaign(spec)
    base = time.perf_counter() - t
    print(f"  serial        {serial.executions} executions ({serial.pruned} pruned), "
          f"{len(serial.states)} states, {len(spec.chunks())} chunks, {base:.1f}s", flush=True)
    runs = [("--jobs 2", dict(jobs=2))]
    if use_ray:
        runs += [("ray 1 worker", dict(jobs=1, ray_address="local")),
                 ("ray 2 workers", dict(jobs=2, ray_address="local"))]
    one_worker = None
    for label, kw in runs:
        if kw.get("ray_address"):
            import ray
            ray.shutdown()
        t = time.perf_counter()
        st = run_campaign(spec, **kw)
        dt = time.perf_counter() - t
        vs = ""
        if kw.get("ray_address"):  # cluster start-up included, as a user would see it
            one_worker = one_worker or dt
            vs = f", x{one_worker / dt:.2f} vs 1 Ray worker"
        print(f"  {label:13s} {st.executions} executions, {dt:.1f}s, speed-up x{base / dt:.2f}"
              f" vs serial{vs}, identical to serial: {_same(st, serial)}", flush=True)


def exhaust(names: list[str], cap: float) -> None:
    print(f"== optimal DPOR to exhaustion on every built-in scenario (cap {cap:.0f} s wall) ==")
    for name in names or builtin_names():
        sc = load_scenario(name, {})
        cpu = time.process_time()
        rep = explore(sc, DporScheduler(10**9), time_limit=cap, stop_on_failure=False)
        cpu = time.process_time() - cpu
        print(f"  {name:18s} {rep.executions:8d} exec {rep.pruned:6d} sleep-blocked "
              f"{cpu:7.1f} s CPU {rep.seconds:7.1f} s wall  exhausted: "
              f"{'yes' if rep.exhausted else 'no '}  {len(rep.states):3d} final states  "
              f"{len(rep.failures)} failures {sorted(rep.failures)[:2]}", flush=True)


def sound(names: list[str], bound: int) -> None:
    print(f"== soundness: traces bounded DFS (bound {bound}) reaches that DPOR never ran ==")
    for name in names or builtin_names():
        sc = load_scenario(name, {})
        t = time.process_time()
        nd, dfs = explore_traces(sc, DfsScheduler(bound, 10**9))
        td = time.process_time() - t
        t = time.process_time()
        np_, dp = explore_traces(sc, DporScheduler(10**9))
        tp = time.process_time() - t
        missing = set(dfs) - set(dp)
        lost = set(dfs.values()) - set(dp.values())
        print(f"  {name:18s} DFS {nd:6d} exec {len(dfs):5d} traces ({td:6.1f} s) | DPOR "
              f"{np_:6d} exec {len(dp):5d} traces ({tp:6.1f} s) | DFS traces DPOR missed: "
              f"{len(missing)}, final states missed: {len(lost)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cap", type=float, default=30.0)
    ap.add_argument("--ray", action="store_true", help="also run on a local Ray cluster")
    ap.add_argument("--skip-builtins", action="store_true")
    ap.add_argument("--exhaust", action="store_true", help="only section 4")
    ap.add_argument("--sound", action="store_true", help="only section 5")
    ap.add_argument("--bound", type=int, default=1)
    ap.add_argument("scenarios", nargs="*")
    args = ap.parse_args()
    if args.exhaust or args.sound:
        if args.exhaust:
            exhaust(args.scenarios, args.cap)
        if args.sound:
            sound(args.scenarios, args.bound)
        return
    programs()
    if not args.skip_builtins:
        builtins(args.cap)
    campaigns(args.ray)


if __name__ == "__main__":
    main()
