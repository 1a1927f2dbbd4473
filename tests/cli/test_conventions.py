"""The conventions every command follows (cli/common.py): --version, python -m tdpsim,
completion, --help that names every option in full with help text, --json wherever a
table is printed, results on stdout and everything else on stderr, lazy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.main import get_command

from tdpsim import __version__
from tdpsim.cli.main import app

from conftest import GOLDEN, SRC, no_traceback
from sim_small_workloads import SMALL_TD

COMMANDS = sorted(get_command(app).commands)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC)}


def test_version(tdpsim):
    r = tdpsim("--version")
    assert r.exit_code == 0 and r.stdout == f"tdpsim {__version__}\n"


def test_python_dash_m_tdpsim():
    r = subprocess.run([sys.executable, "-m", "tdpsim", "--version"], capture_output=True,
                       text=True, env=_env())
    assert r.returncode == 0 and r.stdout == f"tdpsim {__version__}\n", r.stderr


def test_shell_completion_is_offered(tdpsim, monkeypatch):
    # Typer's own switch: --show-completion takes the shell as its value instead of
    # detecting it from the parent processes, which fails when no shell is among them
    # (a suite started with setsid, or under a service manager).
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    r = tdpsim("--show-completion", "bash")
    assert r.exit_code == 0 and "_TDPSIM_COMPLETE=complete_bash" in r.stdout
    assert "--install-completion" in tdpsim("--help").stdout


def test_every_command_is_listed_with_its_short_help(tdpsim):
    out = tdpsim("--help", columns=80).stdout
    for name in COMMANDS:
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        assert len(line) <= 80 and not line.endswith("...")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_is_named_in_full_at_80_columns(tdpsim, command):
    cmd = get_command(app).commands[command]
    for p in cmd.params:
        assert p.hidden or (getattr(p, "help", None) or "").strip(), (command, p.name)
    r = tdpsim(command, "--help", columns=80)
    assert r.exit_code == 0, r.output
    assert max(map(len, r.stdout.splitlines())) <= 80
    for p in cmd.params:
        if not getattr(p, "hidden", False):
            for opt in (*p.opts, *p.secondary_opts):
                if opt.startswith("-"):
                    assert opt in r.stdout, (command, opt)


def test_strategy_help_names_every_strategy(tdpsim):
    from tdpsim.explore.campaign import STRATEGIES
    from tdpsim.cli.explore import STRATEGY_HELP
    assert all(s in STRATEGY_HELP for s in STRATEGIES)


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom tdpsim.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = ('matplotlib', 'polars', 'numpy', 'ray', 'tdpsim.model.tdp_mmu',"
            " 'tdpsim.report.html', 'tdpsim.trace.parser', 'tdpsim.explore.engine')\n"
            "print(' '.join(m for m in heavy if m in sys.modules), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env())
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


# --json: every command that prints a table


@pytest.fixture
def small(tmp_path):
    p = tmp_path / "small.toml"
    p.write_text(SMALL_TD)
    return p


@pytest.fixture(scope="module")
def schedule(tmp_path_factory):
    from typer.testing import CliRunner
    out = tmp_path_factory.mktemp("sched") / "s.json"
    r = CliRunner().invoke(app, ["explore", "seed_promotion", "-p",
                                 "policy.mirror_promotion=unpatched", "-n", "100", "-o",
                                 str(out), "--no-progress"])
    assert r.exit_code == 1, r.output
    return out


def _json(r):
    no_traceback(r)
    return json.loads(r.stdout)


def test_json_of_listings(tdpsim):
    from tdpsim.sim import PRESETS, builtin_names
    from tdpsim.explore.scenario import builtin_names as scenario_names
    assert [w["name"] for w in _json(tdpsim("workloads", "--json"))] == builtin_names()
    pol = _json(tdpsim("policies", "--json"))
    assert [p["name"] for p in pol] == list(PRESETS)
    assert pol[0]["switches"] == dict(PRESETS[pol[0]["name"]].switches)
    assert [s["name"] for s in _json(tdpsim("scenarios", "--json"))] == scenario_names()


def test_json_of_seed_and_fault(tdpsim):
    seed = _json(tdpsim("seed", "--json"))
    assert [o["variant"] for o in seed][:2] == ["direct", "mirror-patched"]
    assert seed[1]["pages"] == [512, 0, 0] and "dump" not in seed[0]
    f = _json(tdpsim("fault", "0x400", "0x600:x", "--nx-huge-pages", "--json"))
    assert [x["result"] for x in f["faults"]] == ["RET_PF_FIXED", "RET_PF_FIXED"]
    assert f["stats"]["pages_4k"] == 1 and f["stats"]["pages_2m"] == 1
    assert f["roots"][0]["name"].startswith("direct root l4")


def test_json_of_run_and_compare(tdpsim, small):
    run = _json(tdpsim("run", small, "-p", "upstream", "--json"))
    assert len(run) == 1 and run[0]["preset"] == "upstream" and run[0]["status"] == "ok"
    cmp = _json(tdpsim("compare", small, "-p", "upstream", "-p", "no-huge", "--json"))
    assert [r["preset"] for r in cmp] == ["upstream", "no-huge"]
    assert cmp[0]["totals"] == run[0]["totals"]


def test_json_of_explore_and_replay(tdpsim, schedule, tmp_path):
    ok = _json(tdpsim("explore", "seed_2vcpu", "-n", "20", "--json"))
    assert ok["executions"] == 20 and ok["failure"] is None
    out = tmp_path / "s.json"
    bad = tdpsim("explore", "seed_promotion", "-p", "policy.mirror_promotion=unpatched",
                 "-n", "100", "-o", out, "--json")
    assert bad.exit_code == 1 and json.loads(bad.stdout)["schedule"] == str(out)
    rep = tdpsim("replay", schedule, "--json")
    assert rep.exit_code == 1
    doc = json.loads(rep.stdout)
    assert doc["failure"]["kind"] and doc["steps"] == len(doc["trace"])


def test_json_of_replay_trace(tdpsim):
    doc = _json(tdpsim("replay-trace", GOLDEN / "good_direct_promotion.txt", "--json"))
    assert doc["pages"] == {"4k": 0, "2m": 1, "1g": 0}


# stdout for results, stderr for the rest


def test_errors_go_to_stderr(tdpsim, tmp_path):
    for args in (("explore", "no_such_scenario"), ("replay", tmp_path / "none.json"),
                 ("run", tmp_path / "none.toml"), ("replay-trace", tmp_path / "none.txt")):
        r = tdpsim(*args)
        assert r.exit_code == 2 and r.stdout == "" and r.stderr.startswith("error: "), args


def test_report_says_where_it_wrote(tdpsim, small, tmp_path):
    out = tmp_path / "rep"
    r = tdpsim("run", small, "--report", out, "--trace", tmp_path / "t.txt")
    assert r.exit_code == 0, r.output
    assert f"report written to {out / 'index.html'}" in r.stderr
    assert f"trace written to {tmp_path / 't.txt'}" in r.stderr
    assert "written" not in r.stdout


def test_ray_hint_keeps_its_brackets(tdpsim, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    r = tdpsim("explore", "seed_2vcpu", "--ray", "localhost:1")
    assert r.exit_code == 2 and "pip install 'tdpsim[ray]'" in r.stderr


def test_exhaustive_progress_shows_no_total():
    from tdpsim.cli.explore import _progress_bar
    texts = [getattr(c, "text_format", "") for c in _progress_bar(True, None).columns]
    assert "{task.completed} executions" in texts and not any("total" in t for t in texts)
    texts = [getattr(c, "text_format", "") for c in _progress_bar(True, 10).columns]
    assert "{task.completed}/{task.total}" in texts


def test_replay_trace_progress_callback_reaches_the_end(tmp_path):
    from tdpsim.trace.replay import replay_trace
    src = (GOLDEN / "good_split.txt").read_text()
    big = tmp_path / "big.txt"
    big.write_text(src * (40_000 // src.count("\n")))  # > 2 x 16384 lines
    seen: list[int] = []
    plain = replay_trace(str(big))
    result = replay_trace(str(big), progress=seen.append)
    assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] <= big.stat().st_size
    assert result.to_dict() == plain.to_dict()  # progress changes nothing else


def test_no_progress_on_a_pipe(tdpsim, small):
    r = tdpsim("compare", small, "-p", "upstream")
    assert r.exit_code == 0 and r.stderr == ""
