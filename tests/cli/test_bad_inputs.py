"""Bad input, as a new user hands it over: every case exits 2 with one ``error:`` line
naming the file (and line or field where known), before any work, and without a
traceback; an interrupt keeps what was finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import GOLDEN, SRC, no_traceback, one_error_line
from sim_small_workloads import SMALL_TD

BINARY = {
    "non-utf8": b'name = "x"\n\xff\xfe\x00garbage\n',
    "nul": b"\x00" * 64,
    "random": bytes(range(256)) * 4,
}


@pytest.fixture
def small(tmp_path):
    p = tmp_path / "small.toml"
    p.write_text(SMALL_TD)
    return p


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.fixture
def blocked(tmp_path):
    """A path nobody can create, not even root: its parent is a regular file."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return f / "out"


# ------------------------------------------------------------------ binary input files

@pytest.mark.parametrize("kind", sorted(BINARY))
def test_binary_workload(tdpsim, tmp_path, kind):
    p = _file(tmp_path, "w.toml", BINARY[kind])
    one_error_line(tdpsim("run", p), str(p), "UTF-8" if kind == "non-utf8" else "not")


@pytest.mark.parametrize("kind", sorted(BINARY))
def test_binary_params(tdpsim, tmp_path, small, kind):
    p = _file(tmp_path, "p.toml", BINARY[kind])
    one_error_line(tdpsim("run", small, "--params", p), str(p), "cost parameter file")


@pytest.mark.parametrize("kind", sorted(BINARY))
def test_binary_scenario(tdpsim, tmp_path, kind):
    p = _file(tmp_path, "s.toml", BINARY[kind])
    one_error_line(tdpsim("explore", p), str(p), "scenario")


@pytest.mark.parametrize("kind", sorted(BINARY))
def test_binary_schedule(tdpsim, tmp_path, kind):
    p = _file(tmp_path, "s.json", BINARY[kind])
    one_error_line(tdpsim("replay", p), str(p), "schedule")


@pytest.mark.parametrize("kind", sorted(BINARY))
def test_binary_explore_checkpoint(tdpsim, tmp_path, kind):
    p = _file(tmp_path, "c.json", BINARY[kind])
    one_error_line(tdpsim("explore", "seed_2vcpu", "--checkpoint", p), str(p), "checkpoint")


@pytest.mark.parametrize("kind", sorted(BINARY))
def test_binary_compare_checkpoint(tdpsim, tmp_path, small, kind):
    p = _file(tmp_path, "c.json", BINARY[kind])
    one_error_line(tdpsim("compare", small, "-p", "upstream", "--checkpoint", p), str(p))


def test_error_names_the_line_of_a_non_utf8_byte(tdpsim, tmp_path):
    p = _file(tmp_path, "w.toml", SMALL_TD.encode() + b"\n# caf\xe9\n")
    line = SMALL_TD.count("\n") + 2
    one_error_line(tdpsim("run", p), f"{p}:{line}:", "byte")


def test_explore_checkpoint_of_the_wrong_shape(tdpsim, tmp_path):
    for doc in ([1, 2], {"spec": None}, "x"):
        p = _file(tmp_path, "c.json", json.dumps(doc).encode())
        one_error_line(tdpsim("explore", "seed_2vcpu", "--checkpoint", p), str(p))


# ------------------------------------------------------------------ values and options

def test_absurd_accesses_are_refused_with_the_bound(tdpsim, tmp_path):
    p = _file(tmp_path, "w.toml",
              SMALL_TD.replace("accesses = 40", "accesses = 100000000000000").encode())
    one_error_line(tdpsim("run", p), str(p), "phases[5].accesses",
                   "between 1 and 10000000", "100000000000000")


def test_explore_depth_zero(tdpsim):
    r = tdpsim("explore", "seed_2vcpu", "--depth", "0")
    no_traceback(r)
    assert r.exit_code == 2 and "--depth" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("args", [("fault", "0x400", "--start", "zz"),
                                  ("fault", "-1"), ("fault", "0x1", "--mem-mib", "0"),
                                  ("explore", "seed_2vcpu", "-n", "0"),
                                  ("explore", "seed_2vcpu", "-s", "bfs"),
                                  ("replay-trace", GOLDEN / "good_split.txt",
                                   "--mirror-promotion", "sometimes")])
def test_bad_options(tdpsim, args):
    r = tdpsim(*args)
    no_traceback(r)
    assert r.exit_code == 2 and r.stdout == "" and r.stderr


# ------------------------------------------------------------------ output paths, checked first

def _no_work_done(r) -> None:
    assert "executions" not in r.output and "pages_2m" not in r.output


def test_unwritable_report(tdpsim, small, blocked):
    r = tdpsim("compare", small, "-p", "upstream", "--report", blocked)
    one_error_line(r, "--report", str(blocked), "not a directory")
    _no_work_done(r)


def test_unwritable_trace(tdpsim, small, blocked):
    one_error_line(tdpsim("run", small, "--trace", blocked), "--trace", str(blocked))


def test_report_that_is_a_file(tdpsim, small, tmp_path):
    f = _file(tmp_path, "f", b"")
    one_error_line(tdpsim("run", small, "--report", f), "--report", "not a directory")


def test_unwritable_explore_out_and_checkpoint(tdpsim, blocked):
    r = tdpsim("explore", "seed_promotion", "-p", "policy.mirror_promotion=unpatched",
               "-n", "100", "-o", blocked)
    one_error_line(r, "--out", str(blocked))
    _no_work_done(r)
    one_error_line(tdpsim("explore", "seed_2vcpu", "--checkpoint", blocked), "--checkpoint")


def test_unwritable_perfetto_and_replay_trace_outputs(tdpsim, blocked, tmp_path):
    one_error_line(tdpsim("replay", tmp_path / "x.json", "--perfetto", blocked), "--perfetto")
    trace = GOLDEN / "good_split.txt"
    one_error_line(tdpsim("replay-trace", trace, "--report", blocked), "--report")
    one_error_line(tdpsim("replay-trace", trace, "--export", blocked / "e.csv"), "--export")
    one_error_line(tdpsim("replay-trace", trace, "--export", tmp_path / "e.xlsx"),
                   ".parquet or .csv")


def test_schedule_kept_when_saving_fails_after_the_work(tdpsim, tmp_path, monkeypatch):
    from tdpsim.explore import schedule

    def full_disk(self, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(schedule.Schedule, "save", full_disk)
    r = tdpsim("explore", "seed_promotion", "-p", "policy.mirror_promotion=unpatched",
               "-n", "100", "-o", tmp_path / "s.json", "--no-shrink")
    no_traceback(r)
    assert r.exit_code == 2 and "No space left on device" in r.stderr
    doc = json.loads(r.stdout[r.stdout.index("{"):])  # the schedule, printed whole
    assert doc["format"] == "tdpsim-schedule" and doc["failure"]


# ------------------------------------------------------------------ replay-trace input

@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (bytes(range(256)) * 64, "NUL"),
    (b"\x00" * 4096, "NUL"),
    (b"\x17\x08Dtracing6\x00\x00\x00\x00" + b"\x01" * 512, "trace-cmd report"),
    (bytes(range(1, 256)) * 64, "binary"),
    (b"just some text\nno ftrace here\n", "no KVM events in 2 lines"),
])
def test_replay_trace_refuses_what_is_not_a_trace(tdpsim, tmp_path, data, needle):
    p = _file(tmp_path, "trace.dat", data)
    one_error_line(tdpsim("replay-trace", p), str(p), needle)


def test_replay_trace_directory(tdpsim, tmp_path):
    one_error_line(tdpsim("replay-trace", tmp_path), "not a file")


def test_replay_trace_huge_bad_line_is_clipped(tdpsim, tmp_path):
    text = (GOLDEN / "good_split.txt").read_text().splitlines()
    i = next(n for n, ln in enumerate(text) if "kvm_mmu_split_huge_page:" in ln
             and not ln.startswith("#"))
    text[i] = text[i].replace("errno 0", "errno " + "z" * 10_000_000)
    p = tmp_path / "bad.txt"
    p.write_text("\n".join(text) + "\n")
    r = tdpsim("replay-trace", p)
    no_traceback(r)
    assert r.exit_code == 2 and f"{p}:{i + 1}:" in r.stderr
    assert len(r.stderr) < 2000 and "more characters" in r.stderr


# ------------------------------------------------------------------ interrupts

def test_ctrl_c_in_compare_keeps_finished_presets_and_resumes(tdpsim, small, tmp_path,
                                                              monkeypatch):
    import tdpsim.cli.sim as sim_cli
    args = ("compare", small, "-p", "upstream", "-p", "no-huge", "-p", "nx-off", "-j", "1")
    whole = tdpsim(*args)
    assert whole.exit_code == 0
    real = sim_cli._run_one
    calls = []

    def interrupted_at_third(wl, preset, *a):
        calls.append(preset)
        if preset == "nx-off":
            raise KeyboardInterrupt
        return real(wl, preset, *a)
    monkeypatch.setattr(sim_cli, "_run_one", interrupted_at_third)
    monkeypatch.chdir(tmp_path)
    r = tdpsim(*args)
    no_traceback(r)
    assert r.exit_code == 130
    assert "upstream" in r.stdout and "no-huge" in r.stdout and "nx-off" not in r.stdout
    ckpt = tmp_path / "tdpsim-compare.checkpoint.json"
    assert "2 of 3 presets finished" in r.stderr and f"--checkpoint {ckpt.name}" in r.stderr
    assert ckpt.exists()
    monkeypatch.setattr(sim_cli, "_run_one", real)
    calls.clear()
    resumed = tdpsim(*args, "--checkpoint", ckpt.name)
    assert resumed.exit_code == 0 and "upstream, no-huge already done" in resumed.stderr
    assert resumed.stdout == whole.stdout  # byte-identical to the uninterrupted run


def test_compare_checkpoint_of_other_inputs_is_refused(tdpsim, small, tmp_path):
    ckpt = tmp_path / "c.json"
    assert tdpsim("compare", small, "-p", "upstream", "--checkpoint", ckpt).exit_code == 0
    one_error_line(tdpsim("compare", small, "-p", "upstream", "--seed", "9",
                          "--checkpoint", ckpt), str(ckpt), "other inputs")


def test_pool_workers_leave_sigint_to_the_parent():
    from tdpsim.explore.campaign import _worker_ignores_sigint
    old = signal.getsignal(signal.SIGINT)
    try:
        _worker_ignores_sigint()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def _sigint_default() -> None:
    """As at a terminal: a suite started in the background (``cmd &`` in a script) runs
    with SIGINT ignored, which the tdpsim process would inherit and so never see the
    Ctrl-C (it then ran on until the 60 s timeout)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_explore_jobs_2_prints_no_worker_traceback(tmp_path):
    """Ctrl-C at a terminal signals the whole process group: parent and pool workers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tdpsim", "explore", "seed_2vcpu", "-j", "2", "-n",
         "10000000", "--chunk", "50", "--checkpoint", str(tmp_path / "c.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(SRC)}, preexec_fn=_sigint_default)
    deadline = time.monotonic() + 60
    while not (tmp_path / "c.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the workers are up once the first chunk is checkpointed
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SpawnPoolWorker" not in err, err
    assert "interrupted after" in err and "run the same command again to resume" in err
