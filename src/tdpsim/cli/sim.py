"""``tdpsim run|compare|workloads|policies``: thin wrappers — parse, call ``tdpsim.sim``,
hand the results to ``tdpsim.report``.

Output on stdout is deterministic (same inputs and seed → same bytes).  Progress bars go to
stderr and only when stderr is a terminal.  A bad workload or parameter file is reported as
one line naming the file, the key and what was expected, with exit status 2.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..cost import DEFAULT_PARAMS, CostParams, CostParamsError, load_params
from ..model.profile import DEFAULT_PROFILE, KernelProfile
from ..report import (compare_view, comparison_table, presets_table, workloads_table,
                      write_report)
from ..sim import (PRESETS, PolicyError, is_preset, WorkloadError, builtin_names, builtin_workload,
                   resolve_workload)
from ..sim.runner import RunResult, simulate
from ..sim.runner import compare as sim_compare
from .kernel_opts import kernel_option, resolve_kernel

WORKLOAD_HELP = "A built-in workload name (see `tdpsim workloads`) or a path to a .toml file."


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)  # one unwrapped line, no traceback
    raise typer.Exit(2)


def _load(workload: str, memory_gib: Optional[float], vcpus: Optional[int]):
    try:
        wl = resolve_workload(workload)
        if memory_gib is not None or vcpus is not None:
            wl = wl.with_vm(memory_gib=memory_gib, vcpus=vcpus)
        return wl
    except WorkloadError as e:
        _fail(str(e))


def _params(path: Optional[Path]) -> CostParams:
    if path is None:
        return DEFAULT_PARAMS
    try:
        return load_params(path)
    except CostParamsError as e:
        _fail(str(e))
    raise AssertionError  # unreachable


@contextmanager
def _progress(enabled: bool) -> Iterator[Optional[Progress]]:
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as prog:
        yield prog


def _callback(prog: Optional[Progress], label: str):
    if prog is None:
        return None
    task = prog.add_task(label, total=1)

    def cb(i: int, n: int, phase: str, done: int, total: int) -> None:
        prog.update(task, description=f"{label} [{i + 1}/{n}] {phase}", completed=done,
                    total=total)
    return cb


def _profile(wl, kernel: Optional[str]) -> KernelProfile:
    """``--kernel``, checked against the workload: a TD needs a kernel with TDX."""
    profile = resolve_kernel(kernel)
    if wl.vm.tdx and not profile.tdx_vm_type:
        _fail(f"workload {wl.name!r} is a TD, but kernel {profile.name} has no "
              "KVM_X86_TDX_VM (TDX host support landed in v6.16)")
    return profile


def _run_all(wl, presets: List[str], seed: Optional[int], params: CostParams,
             progress: bool, trace: Optional[Path] = None,
             profile: KernelProfile = DEFAULT_PROFILE) -> List[RunResult]:
    results = []
    with _progress(progress) as prog:
        for p in presets:
            emitter = None
            hook = None
            if trace is not None:
                from ..trace.emit import TraceEmitter
                emitter = TraceEmitter.open(trace, nr_cpus=wl.vm.vcpus)

                def hook(vcpu: int, em=emitter) -> None:
                    if vcpu >= 0:
                        em.set_task(vcpu=vcpu)
                    else:
                        em.set_task(comm="kvm-nx-lpage-re", pid=3999, cpu=0)
            try:
                results.append(simulate(wl, p, seed, tracer=emitter, task_hook=hook,
                                        progress=_callback(prog, p), params=params,
                                        profile=profile))
            except PolicyError as e:
                _fail(str(e))
            finally:
                if emitter is not None:
                    emitter.close()
    return results


def register(app: typer.Typer) -> None:
    """Add ``run``, ``compare``, ``workloads`` and ``policies`` to the tdpsim app."""

    @app.command()
    def run(workload: str = typer.Argument(..., help=WORKLOAD_HELP),
            policy: str = typer.Option("hp3-seed", "--policy", "-p",
                                       help="Policy preset (see `tdpsim policies`)."),
            seed: Optional[int] = typer.Option(None, "--seed", help="RNG seed (default: "
                                               "the workload's)."),
            trace: Optional[Path] = typer.Option(None, "--trace", help="Write the model's "
                                                 "events as kernel trace lines here."),
            report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML "
                                                  "report, plots, metrics.json/csv here."),
            params: Optional[Path] = typer.Option(None, "--params", help="Cost parameter "
                                                  "file (TOML)."),
            memory_gib: Optional[float] = typer.Option(None, "--memory-gib",
                                                       help="Override vm.memory_gib."),
            vcpus: Optional[int] = typer.Option(None, "--vcpus", help="Override vm.vcpus."),
            progress: bool = typer.Option(True, "--progress/--no-progress",
                                          help="Progress bar on stderr (TTY only)."),
            kernel: Optional[str] = kernel_option(),
            ) -> None:
        """Run WORKLOAD under one policy preset and print its metrics."""
        if not is_preset(policy):
            _fail(f"unknown policy preset {policy!r}; known: {', '.join(PRESETS)}")
        wl = _load(workload, memory_gib, vcpus)
        profile = _profile(wl, kernel)
        cp = _params(params)
        results = _run_all(wl, [policy], seed, cp, progress, trace, profile)
        Console(width=120).print(comparison_table(results))
        if report is not None:
            write_report(results, report)
        if not results[0].ok:
            raise typer.Exit(1)

    @app.command()
    def compare(workload: str = typer.Argument(..., help=WORKLOAD_HELP),
                policy: Optional[List[str]] = typer.Option(
                    None, "--policy", "-p", help="Policy preset; repeat to compare several "
                    "(default: the workload's `presets`)."),
                seed: Optional[int] = typer.Option(None, "--seed"),
                report: Optional[Path] = typer.Option(None, "--report"),
                params: Optional[Path] = typer.Option(None, "--params"),
                memory_gib: Optional[float] = typer.Option(None, "--memory-gib"),
                vcpus: Optional[int] = typer.Option(None, "--vcpus"),
                show_all: bool = typer.Option(False, "--all", help="Every metric, not only "
                                              "the ones that differ."),
                jobs: int = typer.Option(0, "--jobs", "-j", help="Worker processes (0: one "
                                         "per CPU, at most one per preset; 1: serial with a "
                                         "progress bar)."),
                progress: bool = typer.Option(True, "--progress/--no-progress"),
                kernel: Optional[str] = kernel_option(),
                ) -> None:
        """Run WORKLOAD under several policy presets with the same seed; print a verdict
        and the metrics that differ (deltas against the first preset)."""
        wl = _load(workload, memory_gib, vcpus)
        profile = _profile(wl, kernel)
        presets = list(policy) if policy else list(wl.presets)
        for p in presets:
            if not is_preset(p):
                _fail(f"unknown policy preset {p!r}; known: {', '.join(PRESETS)}")
        cp = _params(params)
        jobs = jobs or os.cpu_count() or 1
        if jobs > 1 and len(presets) > 1:
            try:
                results = sim_compare(wl, presets, seed, params=cp, jobs=jobs, profile=profile)
            except PolicyError as e:
                _fail(str(e))
        else:
            results = _run_all(wl, presets, seed, cp, progress, profile=profile)
        console = Console()
        console.print(compare_view(results, console.width, show_all=show_all,
                                   published=wl.published))
        if report is not None:
            write_report(results, report, published=wl.published)

    @app.command()
    def workloads() -> None:
        """List the built-in workloads, one per line."""
        items = []
        for name in builtin_names():
            try:
                items.append((name, builtin_workload(name).description))
            except WorkloadError as e:  # a broken built-in must not hide the others
                items.append((name, f"(invalid: {e})"))
        Console(width=160).print(workloads_table(items))

    @app.command()
    def policies() -> None:
        """List every policy preset and the switches it sets."""
        Console(width=160).print(presets_table())
