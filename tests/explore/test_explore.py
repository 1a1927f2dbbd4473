"""The explorer's must-shows: the seed race is found with promotion allowed, DPOR is
exhaustive and clean with the seed patch, schedules replay identically, shrinking never
grows a schedule, malformed schedules and scenarios give clear errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
import sys

import pytest
import typer
from typer.testing import CliRunner

from tdpsim.cli.explore import register
from tdpsim.explore import (
    DfsScheduler, DporScheduler, PctScheduler, RandomScheduler, ScenarioError,
    builtin_names, explore, load_scenario,
)
from tdpsim.explore.campaign import CampaignSpec, run_campaign
from tdpsim.explore.render import diagram, perfetto
from tdpsim.explore.schedule import (
    Schedule, ScheduleError, load_schedule, parse_schedule, replay,
)
from tdpsim.explore.shrink import shrink
from tdpsim.explore.strategies import ReplayScheduler, ScheduleMismatch, pct_bound

UNPATCHED = {"policy.mirror_promotion": "unpatched"}
NX_FAR = Path(__file__).parent / "data" / "nx_recovery_far.toml"
PATCHED = {"policy.mirror_promotion": "disallowed"}


@pytest.fixture(scope="module")
def seed_failure():
    sc = load_scenario("seed_promotion", UNPATCHED)
    rep = explore(sc, PctScheduler(seed=0, depth=3, executions=200))
    assert rep.failure is not None
    return sc, rep


def test_pct_finds_mirror_promotion_bug_quickly(seed_failure):
    sc, rep = seed_failure
    f = rep.failure.failure
    assert f.kind == "KVM_BUG"
    assert "set_external_spte_present" in f.message
    # "Within 1 s": a few hundred executions at the measured rate; assert on the count.
    assert rep.executions <= 50


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pct_finds_it_for_other_seeds(seed):
    sc = load_scenario("seed_promotion", UNPATCHED)
    rep = explore(sc, PctScheduler(seed=seed, depth=3, executions=200))
    assert rep.failure is not None and rep.failure.failure.kind == "KVM_BUG"


def test_dpor_exhaustive_and_clean_with_seed_patch():
    sc = load_scenario("seed_2vcpu", PATCHED)
    sched = DporScheduler(max_executions=2000)
    rep = explore(sc, sched)
    assert rep.failure is None
    assert rep.exhausted and sched.exhausted
    assert rep.executions < 2000


def test_dpor_finds_bug_without_seed_patch():
    sc = load_scenario("seed_2vcpu", UNPATCHED)
    rep = explore(sc, DporScheduler(max_executions=100))
    assert rep.failure is not None and rep.failure.failure.kind == "KVM_BUG"


def test_dpor_needs_fewer_executions_than_bounded_dfs():
    sc = load_scenario("seed_2vcpu", PATCHED)
    dpor = explore(sc, DporScheduler(max_executions=5000))
    dfs = explore(sc, DfsScheduler(preemption_bound=2, max_executions=5000))
    assert dpor.exhausted and dfs.exhausted
    # Optimal DPOR: one execution per Mazurkiewicz trace, none pruned; >= 10x fewer than
    # bounded DFS at bound 2, and fewer than DFS even at bound 1.
    assert (dpor.executions, dpor.pruned) == (12, 0)
    # DFS counts grew (670 -> 906, 38 -> 44) with the points after every lock release
    # (issue 14), and (906 -> 994, 44 -> 46) with the point after srcu_read_lock (session
    # 9); DPOR's did not, those points being independent of everything here.
    assert dfs.executions == 994
    dfs1 = explore(sc, DfsScheduler(preemption_bound=1))
    assert dfs1.executions == 46
    # DPOR is complete (no bound) and reaches every final state the bounded DFS saw.
    assert dfs.states <= dpor.states


def test_optimal_and_source_dpor_on_three_threads():
    sc = load_scenario(str(NX_FAR), PATCHED)
    opt = explore(sc, DporScheduler())
    src = explore(sc, DporScheduler(wakeup_trees=False))
    assert opt.exhausted and src.exhausted
    # On nx_recovery this was 405 / 258 executions (4 / 66 sleep-set blocked) while the page
    # table allocator, RCU's read-side nesting, the vCPU mode fields and
    # sp->nx_huge_page_disallowed had no footprint, and DPOR missed traces DFS reaches
    # (benchmarks/bench_dpor.py --sound).  With them (tracking.py) nx_recovery no longer
    # exhausts in a test's time, so the comparison runs on a three-thread variant.  Source
    # DPOR runs fewer executions than there are traces: it does not reach every trace (a
    # shortfall of the source variant, kept for comparison).
    assert (opt.executions, opt.pruned) == (1408, 16)
    assert (src.executions, src.pruned) == (591, 6)
    assert opt.states == src.states and len(opt.states) == 2


def test_schedule_replays_to_identical_failure_twice(seed_failure, tmp_path):
    sc, rep = seed_failure
    sch = Schedule.from_result(sc, rep.failure, seed=0, strategy="pct")
    path = tmp_path / "s.json"
    sch.save(path)
    loaded = load_schedule(path)
    a = replay(loaded)
    b = replay(loaded)
    assert a.failure == b.failure == rep.failure.failure
    assert [(s.tid, s.kind, s.key, s.funcs, s.detail) for s in a.trace] == \
           [(s.tid, s.kind, s.key, s.funcs, s.detail) for s in b.trace]
    assert diagram(a) == diagram(b)
    assert json.dumps(perfetto(a)) == json.dumps(perfetto(b))


def test_shrunk_schedule_no_longer_and_still_fails(seed_failure, tmp_path):
    sc, rep = seed_failure
    small = shrink(sc, rep.failure)
    assert len(small) <= len(rep.failure.decisions)
    sch = Schedule.from_result(sc, rep.failure, seed=0, strategy="pct", decisions=small)
    res = replay(parse_schedule(sch.to_json()))
    assert res.failure is not None and res.failure.kind == "KVM_BUG"


def test_malformed_schedule_errors_are_clear(seed_failure, tmp_path):
    sc, rep = seed_failure
    good = json.loads(Schedule.from_result(sc, rep.failure, seed=0, strategy="pct").to_json())
    with pytest.raises(ScheduleError, match=r"not valid JSON: .* line 1"):
        parse_schedule("{nope", "x.json")
    bad = dict(good, choices=["vcpu0", "vcpu9"])
    with pytest.raises(ScheduleError, match=r"choices\[1\] \(decision 1\): thread 'vcpu9'.*"
                                            r"expected one of \['vcpu0', 'vcpu1', 'convert'\]"):
        parse_schedule(json.dumps(bad), "x.json")
    with pytest.raises(ScheduleError, match=r"seed: missing"):
        parse_schedule(json.dumps({k: v for k, v in good.items() if k != "seed"}))
    # Well-formed but impossible: a finished thread chosen again.
    sch = parse_schedule(json.dumps(dict(good, choices=["convert"] + ["vcpu0"] * 40)))
    with pytest.raises(ScheduleMismatch, match=r"decision \d+ \(step \d+\): the schedule "
                                               r"chooses thread 'vcpu0' but it .*; expected "
                                               r"one of the runnable threads"):
        replay(sch)


def test_cli_explore_replay_and_errors(tmp_path):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    out = tmp_path / "sched.json"
    r = runner.invoke(app, ["explore", "seed_promotion", "-p",
                            "policy.mirror_promotion=unpatched", "-n", "100", "--out",
                            str(out), "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "KVM_BUG" in r.output and "PCT bound" in r.output and out.exists()
    perf = tmp_path / "p.json"
    r = runner.invoke(app, ["replay", str(out), "--perfetto", str(perf)])
    assert r.exit_code == 1 and "FAILURE at step" in r.output
    doc = json.loads(perf.read_text())
    assert any(e.get("name") == "thread_name" for e in doc["traceEvents"])
    bad = tmp_path / "bad.json"
    bad.write_text(out.read_text().replace('"format": "tdpsim-schedule"', '"format": 3'))
    r = runner.invoke(app, ["replay", str(bad)])
    assert r.exit_code == 2 and "format: expected" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["explore", "no_such_scenario", "--no-progress"])
    assert r.exit_code == 2 and "unknown scenario" in r.output
    r = runner.invoke(app, ["explore", "seed_2vcpu", "--ray", "localhost:1", "--no-progress"])
    assert r.exit_code == 2 and "ray" in r.output.lower()


def test_same_seed_same_output():
    runs = []
    for _ in range(2):
        sc = load_scenario("seed_promotion", PATCHED)
        rep = explore(sc, RandomScheduler(seed=7, executions=30))
        runs.append((rep.executions, rep.steps, sorted(rep.states), sorted(rep.traces)))
    assert runs[0] == runs[1]


def test_cli_output_byte_identical_across_processes(tmp_path):
    code = ("import typer; from typer.testing import CliRunner; "
            "from tdpsim.cli.explore import register; app = typer.Typer(); register(app); "
            "r = CliRunner().invoke(app, ['explore', 'seed_promotion', '-p', "
            "'policy.mirror_promotion=unpatched', '-n', '50', '--seed', '3', '--out', "
            f"r'{tmp_path}/s.json', '--no-progress']); "
            "import re; print(re.sub(r'[0-9.,]+ ?(s|exec/s|steps/s)\\b', 'T', r.output)); "
            f"print(open(r'{tmp_path}/s.json').read())")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(h), "PATH": ""}).stdout
            for h in (1, 2)]
    assert outs[0] == outs[1] and "KVM_BUG" in outs[0]


def test_pct_bound_formula():
    assert pct_bound(3, 10, 1) == pytest.approx(1 / 3)
    assert pct_bound(2, 100, 3) == pytest.approx(1 / (2 * 100 ** 2))


@pytest.mark.parametrize("name", ["aug_vs_demote", "nx_recovery", "eager_split"])
def test_other_scenarios_clean_under_random(name):
    sc = load_scenario(name)
    rep = explore(sc, RandomScheduler(seed=1, executions=15))
    assert rep.failure is None, rep.failure and rep.failure.failure


def test_aug_vs_demote_unpatched_finds_promotion():
    sc = load_scenario("aug_vs_demote", UNPATCHED)
    rep = explore(sc, PctScheduler(seed=0, executions=100))
    assert rep.failure is not None and rep.failure.failure.kind == "KVM_BUG"


def test_builtin_scenarios_load():
    assert {"seed_promotion", "seed_2vcpu", "aug_vs_demote", "nx_recovery",
            "eager_split"} <= set(builtin_names())
    for n in builtin_names():
        assert load_scenario(n).description


def test_scenario_validation_errors(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('name = "x"\n[[threads]]\nname = "a"\nops = [{op = "fault", vcpu = 3, '
                 'gfn = 1}]\n')
    with pytest.raises(ScenarioError, match=r"threads\[0\]\.ops\[0\]\.vcpu: 3 is not a vCPU"):
        load_scenario(str(p))
    p.write_text('name = "x"\n[[threads]]\nname = "a"\nops = [{op = "frobnicate"}]\n')
    with pytest.raises(ScenarioError, match=r"unknown op 'frobnicate'"):
        load_scenario(str(p))
    p.write_text('name = "x"\n[policy]\nmirror_promotion = 3\n[[threads]]\nname = "a"\n'
                 'ops = [{op = "nx_recovery"}]\n')
    with pytest.raises(ScenarioError, match=r"policy\.mirror_promotion: expected str"):
        load_scenario(str(p))
    with pytest.raises(ScenarioError, match=r"only name, vm\.\*"):
        load_scenario("seed_2vcpu", {"threads.x": 1})


def test_campaign_checkpoint_resume_no_loss_no_repeat(tmp_path):
    spec = CampaignSpec("seed_2vcpu", PATCHED, "random", executions=40, seed=5, chunk=10)
    full = run_campaign(spec)
    ck = tmp_path / "ck.json"
    seen = []

    class Kill(Exception):
        pass

    def on_chunk(state, r):
        seen.append(tuple(r.chunk))
        if len(seen) == 2:
            raise Kill

    with pytest.raises(Kill):
        run_campaign(spec, checkpoint=ck, on_chunk=on_chunk)
    resumed = run_campaign(spec, checkpoint=ck, on_chunk=lambda s, r: seen.append(tuple(r.chunk)))
    assert len(seen) == len(set(seen)) == 4
    assert resumed.executions == full.executions == 40
    assert resumed.states == full.states and resumed.traces == full.traces


def test_campaign_jobs_match_serial():
    spec = CampaignSpec("seed_2vcpu", PATCHED, "pct", executions=20, seed=2, chunk=10)
    a = run_campaign(spec, jobs=1)
    b = run_campaign(spec, jobs=2)
    assert (a.executions, a.steps, a.states, a.traces) == \
           (b.executions, b.steps, b.states, b.traces)


def test_deadlock_and_lock_blocking_are_detected():
    """A thread that takes mmu_lock for write and never releases it blocks the vCPU; the
    engine reports a deadlock instead of spinning."""
    from tdpsim.explore.engine import Engine
    sc = load_scenario("seed_2vcpu", PATCHED)
    w = sc.build()
    kvm = w.kvm
    w.threads[1] = ("leaky", lambda: kvm.mmu_lock.write_lock())
    rep = ReplayScheduler([1], [n for n, _ in w.threads])
    rep.new_execution()
    res = Engine(w, rep).run()
    assert res.failure is not None and res.failure.kind == "DEADLOCK"
    assert "waiting for mmu_lock" in res.failure.message


def test_engine_never_imports_the_cli():
    import pathlib
    import tdpsim.explore as pkg
    root = pathlib.Path(pkg.__file__).parent
    for f in root.rglob("*.py"):
        text = f.read_text()
        assert "tdpsim.cli" not in text and "from ..cli" not in text, f
