"""``tdpsim equiv``: do two variants of the seed patch decide the same, fault by fault?

Not a kernel file.  Both variants run every built-in workload (``tdpsim.sim``) and every
interleaving DPOR explores of the built-in scenarios (``tdpsim.explore``), each with a
``Recorder``; their unit streams are then compared in order.  Runs are deterministic, so
comparing B's stream against A's recorded one is the same as running them in lockstep.
For a scenario the interleavings are the union of the schedules DPOR explored under A and
under B, each replayed under the other variant (a schedule one side never explored is
replayed leniently there).

The first difference is shrunk: for a workload, to the fewest phases that still differ;
for a scenario, to the fewest thread ops under the default schedule when that already
differs, else to the shortest schedule (``explore.shrink.ddmin``).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from tdpsim.explore.engine import Engine
from tdpsim.explore.scenario import OpSpec, Scenario, load_scenario
from tdpsim.explore.scenario import builtin_names as scenario_names
from tdpsim.explore.shrink import ddmin
from tdpsim.explore.strategies.dpor import DporScheduler
from tdpsim.explore.strategies.replay import ReplayScheduler
from tdpsim.sim.policies import PRESETS, canonical_preset, policy_from_switches
from tdpsim.sim.runner import simulate
from tdpsim.sim.workload import Workload, builtin_workload
from tdpsim.sim.workload import builtin_names as workload_names

from .recorder import Recorder, Unit

DEFAULT_BUDGET = 200   # DPOR executions per scenario and variant
SHRINK_RUNS = 48       # re-runs a shrink may spend


@dataclass
class Divergence:
    """The first unit two variants disagree on, in one target, after shrinking."""

    target: str
    index: int
    a: Optional[Unit]
    b: Optional[Unit]
    minimal: list[str] = field(default_factory=list)   # the shrunk scenario, one line each


@dataclass
class PairVerdict:
    a: str
    b: str
    faults: int = 0
    interleavings: int = 0
    exhausted: dict[str, bool] = field(default_factory=dict)
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def equivalent(self) -> bool:
        return not self.divergences


def first_difference(ua: Sequence[Unit], ub: Sequence[Unit]) -> Optional[int]:
    for i, (x, y) in enumerate(zip(ua, ub)):
        if x != y:
            return i
    return None if len(ua) == len(ub) else min(len(ua), len(ub))


def _faults(units: Sequence[Unit]) -> int:
    return sum(1 for u in units if u[0] == "fault")


# ------------------------------------------------------------------------------ workloads

def workload_units(wl: Workload, preset: str) -> list[Unit]:
    """The unit stream of one simulated run."""
    rec = Recorder()
    r = simulate(wl, preset, instrument=lambda d: rec.install(d.kvm, d.tdx))
    return rec.finish(() if r.ok else ("stopped", r.status))


def _workload_job(args: tuple[Workload, str]) -> list[Unit]:
    return workload_units(*args)


def _with_phases(wl: Workload, keep: Sequence[int]) -> Workload:
    return dataclasses.replace(wl, phases=tuple(wl.phases[i] for i in keep))


def shrink_workload(wl: Workload, a: str, b: str) -> tuple[Workload, int]:
    """The fewest phases of ``wl`` on which ``a`` and ``b`` still differ."""
    runs = [0]

    def differs(keep: list[int]) -> bool:
        if runs[0] >= SHRINK_RUNS or not keep:
            return False
        runs[0] += 1
        w = _with_phases(wl, keep)
        return first_difference(workload_units(w, a), workload_units(w, b)) is not None

    keep = ddmin(list(range(len(wl.phases))), differs)
    small = _with_phases(wl, keep or range(len(wl.phases)))
    return small, first_difference(workload_units(small, a), workload_units(small, b)) or 0


def _workload_divergence(wl: Workload, a: str, b: str) -> Divergence:
    small, _ = shrink_workload(wl, a, b)
    ua, ub = workload_units(small, a), workload_units(small, b)
    i = first_difference(ua, ub) or 0
    minimal = [f"workload {wl.name}, phases: " + ", ".join(
        f"{p.name} ({p.kind})" for p in small.phases)]
    return Divergence(f"workload {wl.name}", i, _at(ua, i), _at(ub, i), minimal)


def _at(units: Sequence[Unit], i: int) -> Optional[Unit]:
    return units[i] if i < len(units) else None


# ------------------------------------------------------------------------------ scenarios

def scenario_for(sc: Scenario, preset: str) -> Scenario:
    """The scenario under a preset's switches, with fresh setup caches."""
    policy = policy_from_switches(PRESETS[canonical_preset(preset)].switches, sc.policy)
    return dataclasses.replace(sc, policy=policy, _memo={}, _snap={})


class _Holder:
    engine: Any = None

    def tid(self) -> int:
        e = self.engine
        return e.current.tid if e is not None and e.current is not None else -1


def run_execution(sc: Scenario, scheduler: Any) -> tuple[Any, list[Unit]]:
    """One explorer execution with a recorder; the failure (if any) is the last unit."""
    world = sc.build()
    holder = _Holder()
    rec = Recorder(holder.tid).install(world.kvm, world.tdx)
    eng = Engine(world, scheduler, max_steps=sc.max_steps)
    holder.engine = eng
    result = eng.run()
    scheduler.done(result)
    f = result.failure
    return result, rec.finish((f.kind, f.message.split(":")[0]) if f else ())


class ScenarioRuns:
    """One variant's executions of a scenario, keyed by schedule (decision list)."""

    def __init__(self, sc: Scenario, preset: str) -> None:
        self.sc = scenario_for(sc, preset)
        self.preset = preset
        self.by_schedule: dict[tuple[int, ...], list[Unit]] = {}
        self.explored: list[tuple[int, ...]] = []
        self.exhausted = False

    def explore(self, budget: int) -> None:
        sched = DporScheduler(max_executions=budget)
        while sched.new_execution():
            result, units = run_execution(self.sc, sched)
            if result.pruned:
                continue
            key = tuple(result.decisions)
            self.by_schedule[key] = units
            self.explored.append(key)
        self.exhausted = sched.exhausted

    def get(self, decisions: tuple[int, ...]) -> list[Unit]:
        if decisions not in self.by_schedule:
            rep = ReplayScheduler(list(decisions), self.sc.thread_names, strict=False)
            rep.new_execution()
            self.by_schedule[decisions] = run_execution(self.sc, rep)[1]
        return self.by_schedule[decisions]


def _ops_of(sc: Scenario) -> list[tuple[int, int]]:
    return [(t, k) for t, (_, ops) in enumerate(sc.threads) for k in range(len(ops))]


def _with_ops(sc: Scenario, keep: Sequence[tuple[int, int]]) -> Scenario:
    keep_set = set(keep)
    threads = tuple((name, tuple(op for k, op in enumerate(ops) if (t, k) in keep_set))
                    for t, (name, ops) in enumerate(sc.threads))
    return dataclasses.replace(sc, threads=tuple(t for t in threads if t[1]), _memo={},
                               _snap={})


def _diff_on(sc: Scenario, a: str, b: str, decisions: Sequence[int]) -> Optional[int]:
    ua = ScenarioRuns(sc, a).get(tuple(decisions))
    ub = ScenarioRuns(sc, b).get(tuple(decisions))
    return first_difference(ua, ub)


def shrink_scenario(sc: Scenario, a: str, b: str,
                    decisions: tuple[int, ...]) -> tuple[Scenario, tuple[int, ...]]:
    """Fewest thread ops under the default schedule if that already differs; else the
    shortest schedule that still differs."""
    runs = [0]

    def budget() -> bool:
        runs[0] += 1
        return runs[0] <= SHRINK_RUNS

    if _diff_on(sc, a, b, ()) is not None:
        ops = _ops_of(sc)
        idx = ddmin(list(range(len(ops))), lambda keep: bool(keep) and budget() and _diff_on(
            _with_ops(sc, [ops[i] for i in keep]), a, b, ()) is not None)
        return _with_ops(sc, [ops[i] for i in idx] if idx else ops), ()
    ds = ddmin(list(decisions), lambda d: budget() and _diff_on(sc, a, b, d) is not None)
    return sc, tuple(ds)


def describe_scenario(sc: Scenario, decisions: Sequence[int]) -> list[str]:
    lines = [f"scenario {sc.name}:"]
    lines += ["  setup " + op.describe() for op in sc.setup]
    for name, ops in sc.threads:
        lines.append(f"  thread {name}: " + "; ".join(op.describe() for op in ops))
    names = sc.thread_names
    lines.append("  schedule: " + (" ".join(names[d] if 0 <= d < len(names) else str(d)
                                            for d in decisions) or "default (no preemption)"))
    return lines


def _scenario_divergence(sc: Scenario, a: str, b: str, decisions: tuple[int, ...]) -> Divergence:
    small, ds = shrink_scenario(sc, a, b, decisions)
    ua, ub = ScenarioRuns(small, a).get(ds), ScenarioRuns(small, b).get(ds)
    i = first_difference(ua, ub) or 0
    return Divergence(f"scenario {sc.name}", i, _at(ua, i), _at(ub, i),
                      describe_scenario(small, ds))


def compare_scenario(ra: ScenarioRuns, rb: ScenarioRuns, verdict: PairVerdict,
                     sc: Scenario) -> None:
    schedules = list(dict.fromkeys(ra.explored + rb.explored))
    verdict.interleavings += len(schedules)
    verdict.exhausted[sc.name] = ra.exhausted and rb.exhausted
    first: Optional[tuple[int, ...]] = None
    for s in schedules:
        ua, ub = ra.get(s), rb.get(s)
        verdict.faults += _faults(ua)
        if first is None and first_difference(ua, ub) is not None:
            first = s
    if first is not None:
        verdict.divergences.append(_scenario_divergence(sc, ra.preset, rb.preset, first))


# ------------------------------------------------------------------------------ drivers

@dataclass
class Targets:
    workloads: list[str]
    scenarios: list[str]

    @classmethod
    def builtin(cls) -> "Targets":
        return cls(workload_names(), scenario_names())


def check(variants: Sequence[str], targets: Targets, budget: int = DEFAULT_BUDGET,
          jobs: int = 1, progress: Optional[Callable[[str], None]] = None
          ) -> list[PairVerdict]:
    """A verdict for every pair of ``variants`` (in order: (v0, v1), (v0, v2), …)."""
    say = progress or (lambda _: None)
    pairs = [(a, b) for i, a in enumerate(variants) for b in variants[i + 1:]]
    verdicts = {p: PairVerdict(*p) for p in pairs}
    for name in targets.scenarios:
        sc = load_scenario(name)
        runs = {}
        for v in variants:
            say(f"scenario {name}: DPOR under {v}")
            runs[v] = ScenarioRuns(sc, v)
            runs[v].explore(budget)
        for a, b in pairs:
            say(f"scenario {name}: {a} vs {b}")
            compare_scenario(runs[a], runs[b], verdicts[(a, b)], sc)
    for name in targets.workloads:
        wl = builtin_workload(name)
        say(f"workload {name}: {len(variants)} runs")
        units = _run_workload(wl, variants, jobs)
        for a, b in pairs:
            v = verdicts[(a, b)]
            v.faults += _faults(units[a])
            if first_difference(units[a], units[b]) is not None:
                say(f"workload {name}: {a} vs {b} differ, shrinking")
                v.divergences.append(_workload_divergence(wl, a, b))
    return [verdicts[p] for p in pairs]


def _run_workload(wl: Workload, variants: Sequence[str], jobs: int) -> dict[str, list[Unit]]:
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(variants))) as pool:
            return dict(zip(variants, pool.map(_workload_job, [(wl, v) for v in variants])))
    return {v: workload_units(wl, v) for v in variants}
