"""Mutation benchmark: does the explorer (and do the tests) kill planted concurrency bugs?

  python benchmarks/bench_mutation.py [--executions 1000] [--set NAME|all]
                                      [--only NAME ...] [--tests] [--json out.json]

Each mutant of ``benchmarks/mutants.py`` is applied alone to a copy of ``src/tdpsim`` in a
temporary directory (the worktree is never touched).  A subprocess with that copy first on
``PYTHONPATH`` explores every built-in scenario, in name order, with DPOR and then PCT
(depth 3, seed 0): ``--executions`` per scenario, half to each (PCT is skipped where DPOR
exhausted the scenario: it covered every ordering), cheapest scenarios first, and stops at
the first failing execution: the mutant is *killed by the explorer* there, and the report
gives the scenario, strategy, failure kind, the executions that run needed and the
executions spent on every scenario before it (``spent``: the cost of finding the bug
without knowing where it is).  ``--tests`` also runs
``tests/model tests/explore tests/stateful`` against the copy (``-x``): *killed by the tests*
when they fail.  ``--set``: one of ``mutants.SETS`` (the 26 bugs of session 2, ``old``; the fresh
bugs of session 3, ``fresh``, of session 4, ``fresh4``, ...), each written before the checks
that see them, or ``all``.  A mutant that does not apply (its text is gone) is reported as
such, never counted.  Prints one line per mutant and the kill rates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The model copied for each mutant (``--src``: a frozen copy, so edits made meanwhile to the
# worktree do not leak into later mutants).
SRC = ROOT / "src" / "tdpsim"
sys.path.insert(0, str(HERE))
from mutants import SETS  # noqa: E402

WORKER = r'''
import json, sys
from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.explore.scenario import builtin_names
n = int(sys.argv[1]) // 2  # per strategy
CHEAP_FIRST = ["roots_invalidate", "roots_alloc_race", "roots_invalidate_migrate", "seed_2vcpu",
               "td_convert_shared", "td_memslot_delete",
               "memslot_delete", "memslot_move",
               "tlb_reenter", "tlb_dirty_log", "pml_nx_recovery", "tlb_flush_race", "tlb_zap",
               "tlb_zap_yield", "zap_yield_nx_recovery",
               "tlb_nx_recovery", "fast_pf_migrate", "host_migrate", "host_migrate_notifier",
               "host_migrate_overlap", "tlb_recover",
               "tlb_notifier", "aug_vs_demote", "nx_recovery",
               "td_zap_reenter", "td_entry_track", "td_accept_punch", "td_accept_convert",
               "td_accept_4k_fault_2m", "seed_promotion", "eager_split"]
names = sys.argv[2:] or builtin_names()
spent = 0
for name in [x for x in CHEAP_FIRST if x in names] + [x for x in names if x not in CHEAP_FIRST]:
    sc = load_scenario(name)
    for strategy in ("dpor", "pct"):
        sched = DporScheduler(max_executions=n) if strategy == "dpor" else \
            PctScheduler(seed=0, depth=3, executions=n)
        rep = explore(sc, sched)
        spent += rep.executions
        if strategy == "dpor" and sched.exhausted and rep.failure is None:
            break  # every ordering was covered: PCT cannot find more here
        if rep.failure is not None:
            f = rep.failure.failure
            print(json.dumps({"killed": True, "scenario": name, "strategy": strategy,
                              "executions": rep.failure_index + 1, "spent": spent,
                              "kind": f.kind, "message": f.message[:160]}))
            sys.exit(0)
print(json.dumps({"killed": False, "spent": spent}))
'''


def apply(mutant: dict, dest: Path) -> bool:
    shutil.copytree(SRC, dest / "tdpsim",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for file, old, new in [(mutant["file"], mutant["old"], mutant["new"])] + \
            mutant.get("also", []):
        path = dest / "tdpsim" / file
        text = path.read_text()
        if text.count(old) != 1:
            return False
        path.write_text(text.replace(old, new))
    return True


def run_explorer(dest: Path, executions: int, scenarios: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1")
    # cwd=dest: ``python -c`` puts the working directory first on sys.path, so a tdpsim
    # package there would shadow the mutated copy.
    r = subprocess.run([sys.executable, "-c", WORKER, str(executions), *scenarios], env=env,
                       cwd=dest, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"killed": True, "kind": "CRASH", "scenario": "-", "strategy": "-",
                "executions": 0, "spent": 0, "message": r.stderr.strip()[-160:]}
    return json.loads(lines[-1])


def run_tests(dest: Path) -> bool:
    env = dict(os.environ, PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                        "tests/model", "tests/explore", "tests/stateful"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=3600)
    return r.returncode != 0


def summarise(rows: list[dict], label: str, tests: bool, budget: int) -> None:
    """Kill rates of one set of mutants: explorer (per class), tests, both; executions."""
    n = len(rows)
    killed = sum(r["killed"] for r in rows)
    print(f"\n{label}: explorer kills {killed}/{n} = {100 * killed / n:.0f}% "
          f"({budget} executions per scenario)")
    for cls in sorted({r["cls"] for r in rows}):
        sub = [r for r in rows if r["cls"] == cls]
        print(f"  {cls:5s} {sum(r['killed'] for r in sub)}/{len(sub)}")
    within = sum(r["killed"] and r["spent"] <= budget for r in rows)
    print(f"  killed within {budget} executions in all (every scenario before the killing "
          f"one counted): {within}/{n} = {100 * within / n:.0f}%")
    if tests:
        tk = sum(r["tests_killed"] for r in rows)
        both = sum(r["killed"] or r["tests_killed"] for r in rows)
        print(f"  tests kill {tk}/{n} = {100 * tk / n:.0f}%; together {both}/{n}")
    ex = sorted(r["executions"] for r in rows if r["killed"])
    sp = sorted(r["spent"] for r in rows if r["killed"])
    if ex:
        print(f"  executions to first failure (killing run): median {ex[len(ex) // 2]}, "
              f"max {ex[-1]}; spent over all scenarios: median {sp[len(sp) // 2]}, "
              f"max {sp[-1]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--executions", type=int, default=1000)
    ap.add_argument("--set", choices=(*SETS, "all"), default="all")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--scenarios", nargs="*", default=[],
                    help="explore only these built-in scenarios (default: all)")
    ap.add_argument("--tests", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--src", type=Path, default=None, help="tdpsim package to mutate")
    args = ap.parse_args()
    global SRC
    if args.src is not None:
        SRC = args.src
    rows = []
    chosen = SETS[args.set] if args.set != "all" else [m for ms in SETS.values() for m in ms]
    for m in chosen:
        if args.only and m["name"] not in args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="tdpsim-mut-") as tmp:
            dest = Path(tmp)
            if not apply(m, dest):
                print(f"{m['name']:38s} {m['cls']:5s} DOES NOT APPLY", flush=True)
                continue
            t0 = time.perf_counter()
            res = run_explorer(dest, args.executions, args.scenarios)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            if args.tests:
                res["tests_killed"] = run_tests(dest)
        res.update(name=m["name"], cls=m["cls"], what=m["what"],
                   set=next(label for label, ms in SETS.items() if m in ms))
        rows.append(res)
        where = (f"{res['scenario']}/{res['strategy']} after {res['executions']} exec: "
                 f"{res['kind']}: {res['message'][:70]}") if res["killed"] else \
            f"survived {res['spent']} executions"
        tests = "" if "tests_killed" not in res else \
            (" tests:KILL" if res["tests_killed"] else " tests:survive")
        print(f"{m['name']:38s} {m['cls']:5s} {'KILL' if res['killed'] else 'LIVE'} "
              f"{where}{tests} ({res['seconds']}s)", flush=True)
    for label in SETS:
        sub = [r for r in rows if r["set"] == label]
        if sub:
            summarise(sub, label, args.tests, args.executions)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
