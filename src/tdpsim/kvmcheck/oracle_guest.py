"""Inside the QEMU guest of the oracle harness: run the check matrix with kvmmmu tracing.

``python -m tdpsim.kvmcheck.oracle_guest --out DIR [--only NAME ...]`` is what the
initramfs of :mod:`tdpsim.kvmcheck.qemu` runs in the TCG guest, against that guest
kernel's own KVM (kvm_amd with NPT, the TDP MMU).  For each row it

* sets the row's module parameters (``/sys/module/kvm/parameters/...``, e.g.
  ``nx_huge_pages=force``) and restores them afterwards,
* clears the ftrace buffer and enables the ``kvmmmu`` events and ``kvm:kvm_page_fault``,
* runs the row once in a fresh VM (:func:`tdpsim.kvmcheck.compare.run_host`),
* writes the row's trace to ``DIR/traces/<row>.trace`` and appends the row (the kernel's
  phases, stats deltas, parameters, ftrace overruns, or the error) as one JSON line to
  ``DIR/rows.jsonl``, flushed, so a later hang still leaves every earlier row.

``DIR/facts.json`` (kernel release, command line, module parameters) is written first.
Every step prints one ``oracle-row:`` line on the console, which the host harness reads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from typing import Iterable, Mapping, Sequence

from . import uapi as u
from .compare import ORACLE_MATRIX, PRIVATE_MATRIX, phase_to_dict, run_host
from .host_matrix import HostScenario, host_facts
from .vm import KvmCheckError, KvmSystem, read_module_params

__all__ = ["TRACEFS", "TRACE_EVENTS", "PHASE_MARK", "main", "run_rows", "run_selftests",
           "oracle_matrix"]

TRACEFS = "/sys/kernel/tracing"
#: the events the replayer reads; kvm_entry/kvm_exit would only fill the buffer
TRACE_EVENTS = ("kvmmmu", "kvm/kvm_page_fault")
TRACE_BUFFER_KB = 65536


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _trace_on(events: Iterable[str] = TRACE_EVENTS) -> None:
    _write(f"{TRACEFS}/tracing_on", "0")
    _write(f"{TRACEFS}/buffer_size_kb", str(TRACE_BUFFER_KB))
    _write(f"{TRACEFS}/trace", "")
    for e in events:
        _write(f"{TRACEFS}/events/{e}/enable", "1")
    _write(f"{TRACEFS}/tracing_on", "1")


#: what :func:`_mark` writes to ``trace_marker`` before a phase name
PHASE_MARK = "tdpsim-phase "


def _mark(name: str) -> None:
    """Cut the trace: everything before this line belongs to phase *name*."""
    _write(f"{TRACEFS}/trace_marker", PHASE_MARK + name)


def _overruns() -> int:
    """Sum of the per-CPU ``overrun:`` counts (events lost to a full buffer)."""
    total = 0
    for cpu in sorted(os.listdir(f"{TRACEFS}/per_cpu")):
        for line in _read(f"{TRACEFS}/per_cpu/{cpu}/stats").splitlines():
            if line.startswith("overrun:"):
                total += int(line.split()[1])
    return total


def _trace_off(dest: str) -> int:
    _write(f"{TRACEFS}/tracing_on", "0")
    with open(f"{TRACEFS}/trace") as src, open(dest, "w") as out:
        for chunk in iter(lambda: src.read(1 << 20), ""):
            out.write(chunk)
    return _overruns()


def _set_params(params: Mapping[str, str]) -> dict[str, str]:
    """Write module parameters (``module.name`` or ``name`` = kvm's); returns the old values."""
    old = {}
    for key, value in params.items():
        mod, _, name = key.rpartition(".")
        path = f"/sys/module/{mod or 'kvm'}/parameters/{name}"
        old[key] = _read(path).strip()
        _write(path, value)
    return old


def _row_record(s: HostScenario, out: str) -> dict:
    row: dict = {"name": s.name}
    trace_path = os.path.join(out, "traces", f"{s.name}.trace")
    old: dict[str, str] = {}
    try:
        old = _set_params(dict(s.module_params))
        facts = host_facts()
        row["kvm_params"] = facts["kvm_params"]
        _trace_on()
        try:
            host = run_host(s, repeats=1, facts=facts, marker=_mark)
        finally:
            row["trace_overruns"] = _trace_off(trace_path)
        row["skipped"] = host.skipped
        row["native"] = None
        if not host.skipped:
            row["kernel_phases"] = [phase_to_dict(p) for p in host.phases]
            row["stat_deltas"] = dict(host.stat_deltas)
        row["trace"] = os.path.relpath(trace_path, out)
    except (KvmCheckError, OSError, ValueError) as e:
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc()
    finally:
        try:
            _set_params(old)
        except OSError as e:
            row["error"] = row.get("error") or f"restoring module parameters: {e}"
    return row


def npt_root_level(cpuinfo: str = "/proc/cpuinfo") -> int:
    """``get_npt_level``: the NPT walk is as long as the host's own (5 with LA57 paging,
    i.e. when the CPU has la57: -cpu max; -cpu max,-la57 gives 4)."""
    for line in _read(cpuinfo).splitlines():
        if line.startswith("flags"):
            return 5 if "la57" in line.split() else 4
    return 4


def run_rows(matrix: Sequence[HostScenario], out: str) -> int:
    """Run *matrix* into *out*; returns the number of rows that raised."""
    os.makedirs(os.path.join(out, "traces"), exist_ok=True)
    facts = host_facts()
    facts["cmdline"] = _read("/proc/cmdline").strip()
    facts["kvm_amd_params"] = read_module_params("kvm_amd")
    facts["npt_root_level"] = npt_root_level()
    _write(os.path.join(out, "facts.json"), json.dumps(facts, indent=1, sort_keys=True) + "\n")
    bad = 0
    with open(os.path.join(out, "rows.jsonl"), "a") as f:
        for s in matrix:
            print(f"oracle-row: {s.name} start", flush=True)
            row = _row_record(s, out)
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
            status = "error " + row["error"] if "error" in row else (
                "skipped" if row.get("skipped") else "done")
            bad += "error" in row
            print(f"oracle-row: {s.name} {status}", flush=True)
    return bad


def run_selftests(tests: Sequence[str], out: str, timeout: float = 900) -> None:
    """Run each ``NAME=COMMAND`` (a KVM selftest) with the kvmmmu trace on; its exit
    code and output go to ``DIR/selftests.jsonl``, its trace to ``selftests/NAME.trace``."""
    os.makedirs(os.path.join(out, "selftests"), exist_ok=True)
    with open(os.path.join(out, "selftests.jsonl"), "a") as f:
        for spec in tests:
            name, _, cmd = spec.partition("=")
            print(f"oracle-selftest: {name} start", flush=True)
            _trace_on()
            try:
                p = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True,
                                   timeout=timeout)
                rec = {"name": name, "command": cmd, "returncode": p.returncode,
                       "stdout": p.stdout, "stderr": p.stderr}
            except subprocess.TimeoutExpired as e:
                rec = {"name": name, "command": cmd, "returncode": None,
                       "stdout": e.stdout or "", "stderr": f"timed out after {timeout:.0f} s"}
            finally:
                trace = os.path.join(out, "selftests", f"{name}.trace")
                overruns = _trace_off(trace)
            rec["trace_overruns"] = overruns
            rec["kvm_params"] = read_module_params("kvm")
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            print(f"oracle-selftest: {name} exit {rec['returncode']}", flush=True)


def oracle_matrix() -> tuple[HostScenario, ...]:
    """What this kernel's KVM can run: the private-memory rows only where it can create a
    KVM_X86_SW_PROTECTED_VM (Debian's 6.12 config lacks CONFIG_KVM_SW_PROTECTED_VM)."""
    with KvmSystem() as kvm:
        swprot = kvm.supports_vm_type(u.KVM_X86_SW_PROTECTED_VM)
    return PRIVATE_MATRIX if swprot else ORACLE_MATRIX


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="oracle_guest", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--selftest", action="append", default=[], metavar="NAME=COMMAND",
                    help="run a KVM selftest (instead of the matrix)")
    a = ap.parse_args(argv)
    if a.selftest:
        run_selftests(a.selftest, a.out)
        print(f"oracle-done: {len(a.selftest)} selftests", flush=True)
        return 0
    matrix = [s for s in oracle_matrix() if not a.only or s.name in a.only]
    bad = run_rows(matrix, a.out)
    print(f"oracle-done: {len(matrix)} rows, {bad} errors", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
