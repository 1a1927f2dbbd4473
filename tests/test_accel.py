"""The optional compiled model (``tdpsim.accel``): refused cleanly when it is missing or
stale; where it is built, byte-identical to the pure-Python reference.

The identity tests need a build of the current sources (``python -m tdpsim.accel build``,
about two minutes of gcc) and skip without one; ``python -m tdpsim.accel check`` runs them.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdpsim import accel
from tdpsim.sim import builtin_names

SRC = Path(__file__).resolve().parents[1] / "src"


def _tdpsim(*args: str, compiled: bool, tmp_dir: Path | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200"}
    env.pop(accel.ENV, None)
    if compiled:
        env[accel.ENV] = "1"
    if tmp_dir is not None:
        env[accel.ENV_DIR] = str(tmp_dir)
    return subprocess.run([sys.executable, "-m", "tdpsim", *args], capture_output=True,
                          env=env, cwd=cwd)


def test_a_missing_build_is_one_error_line(tmp_path):
    r = _tdpsim("workloads", compiled=True, tmp_dir=tmp_path)
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode().startswith(f"error: {accel.ENV}=1 but there is no compiled build "
                                        f"of these sources in {tmp_path}")
    assert len(r.stderr.splitlines()) == 1


def test_the_digest_names_the_sources(tmp_path, monkeypatch):
    """An edit of any compiled module moves the build directory (a stale build never runs)."""
    before = accel.source_digest()
    copy = tmp_path / "tdpsim"
    for m in accel.MODULES:
        dst = copy / (m.split(".", 1)[1].replace(".", "/") + ".py")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(accel._source(m).read_bytes())
    monkeypatch.setattr(accel, "_PKG", copy)
    assert accel.source_digest() == before
    spte = copy / "model" / "spte.py"
    spte.write_bytes(spte.read_bytes() + b"\n")
    assert accel.source_digest() != before


def test_without_the_variable_nothing_is_compiled():
    assert not accel.active() and accel.error is None


built = pytest.mark.skipif(not (accel.build_dir() / "tdpsim").is_dir(),
                           reason="no compiled build of these sources "
                                  "(python -m tdpsim.accel build)")


def _same(*args: str, cwd: Path | None = None) -> bytes:
    pure = _tdpsim(*args, compiled=False, cwd=cwd)
    fast = _tdpsim(*args, compiled=True, cwd=cwd)
    assert pure.returncode == fast.returncode, fast.stderr.decode()
    assert pure.stdout == fast.stdout
    return pure.stdout


@built
@pytest.mark.parametrize("workload", builtin_names())
def test_every_workload_under_every_preset_is_byte_identical(workload):
    assert b'"totals"' in _same("compare", workload, "--json", "--jobs", "2")


@built
def test_the_trace_of_a_td_boot_is_byte_identical(tmp_path):
    for compiled, name in ((False, "pure.txt"), (True, "fast.txt")):
        r = _tdpsim("run", "td-boot", "--trace", str(tmp_path / name), compiled=compiled)
        assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "pure.txt").read_bytes() == (tmp_path / "fast.txt").read_bytes()


@built
@pytest.mark.parametrize("args", [("seed", "--dump"),
                                  ("fault", "0x400", "0x401:x", "0x600:w", "--tdx"),
                                  ("fault", "0x200", "0x201:w", "--kernel", "6.1")])
def test_seed_and_fault_are_byte_identical(args):
    assert _same(*args)


@built
def test_the_explorer_refuses_the_compiled_model():
    r = _tdpsim("explore", "seed_2vcpu", "-n", "1", compiled=True)
    assert r.returncode == 2
    assert r.stderr.decode().startswith("error: explore needs the pure-Python model")
