"""``tdpsim run|compare|workloads|policies``: thin wrappers — parse, call ``tdpsim.sim``,
hand the results to ``tdpsim.report``.

Output on stdout is deterministic (same inputs and seed → same bytes).  Progress bars go to
stderr and only when stderr is a terminal.  A bad workload or parameter file is reported as
one line naming the file, the key and what was expected, with exit status 2.  Output paths
(``--report``, ``--trace``, ``--checkpoint``) are checked before the simulation starts.
Ctrl-C during ``compare`` prints the presets already finished and keeps them in a
checkpoint file, from which the same command resumes.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer

from .common import (EXIT_INTERRUPTED, JSON_HELP, check_writable, fail, note, out_console,
                     print_catalog, print_json)
from .kernel_opts import kernel_option, resolve_kernel

WORKLOAD_HELP = "A built-in workload name (see `tdpsim workloads`) or a path to a .toml file."
POLICY_HELP = "Policy preset (see `tdpsim policies`)."
SEED_HELP = "RNG seed (default: the workload's)."
REPORT_HELP = "Write an HTML report, plots, metrics.json and metrics.csv into DIR."
PARAMS_HELP = "Cost parameter file (TOML, see docs/cost-model.md)."
MEMORY_HELP = "Override the workload's vm.memory_gib."
VCPUS_HELP = "Override the workload's vm.vcpus."
PROGRESS_HELP = "Progress bar on stderr (only when stderr is a terminal)."
CHECKPOINT_HELP = ("Keep each finished preset in FILE and reuse those already there "
                   "(resumes an interrupted compare).")
#: Where an interrupted compare keeps its finished presets when --checkpoint was not given.
DEFAULT_CHECKPOINT = Path("tdpsim-compare.checkpoint.json")


def _load(workload: str, memory_gib: Optional[float], vcpus: Optional[int]):
    from ..sim import WorkloadError, resolve_workload

    try:
        wl = resolve_workload(workload)
        if memory_gib is not None or vcpus is not None:
            wl = wl.with_vm(memory_gib=memory_gib, vcpus=vcpus)
        return wl
    except WorkloadError as e:
        fail(str(e))


def _params(path: Optional[Path]):
    from ..cost import DEFAULT_PARAMS, CostParamsError, load_params

    if path is None:
        return DEFAULT_PARAMS
    try:
        return load_params(path)
    except CostParamsError as e:
        fail(str(e))


def _profile(wl, kernel: Optional[str]):
    """``--kernel``, checked against the workload: a TD needs a kernel with TDX."""
    profile = resolve_kernel(kernel)
    if wl.vm.tdx and not profile.tdx_vm_type:
        fail(f"workload {wl.name!r} is a TD, but kernel {profile.name} has no "
             "KVM_X86_TDX_VM (TDX host support landed in v6.16)")
    return profile


def _check_presets(presets: List[str]) -> None:
    from ..sim import PRESETS, is_preset

    for p in presets:
        if not is_preset(p):
            fail(f"unknown policy preset {p!r}; known: {', '.join(PRESETS)}")


@contextmanager
def _progress(enabled: bool) -> Iterator[Optional[Any]]:
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as prog:
        yield prog


def _callback(prog: Optional[Any], label: str):
    if prog is None:
        return None
    task = prog.add_task(label, total=1)

    def cb(i: int, n: int, phase: str, done: int, total: int) -> None:
        prog.update(task, description=f"{label} [{i + 1}/{n}] {phase}", completed=done,
                    total=total)
    return cb


def _run_one(wl, preset: str, seed: Optional[int], params, prog, trace: Optional[Path],
             profile):
    from ..sim import PolicyError
    from ..sim.runner import simulate

    emitter = hook = None
    if trace is not None:
        from ..trace.emit import TraceEmitter
        emitter = TraceEmitter.open(trace, nr_cpus=wl.vm.vcpus)

        def hook(vcpu: int, em=emitter) -> None:
            if vcpu >= 0:
                em.set_task(vcpu=vcpu)
            else:
                em.set_task(comm="kvm-nx-lpage-re", pid=3999, cpu=0)
    try:
        return simulate(wl, preset, seed, tracer=emitter, task_hook=hook,
                        progress=_callback(prog, preset), params=params, profile=profile)
    except PolicyError as e:
        fail(str(e))
    finally:
        if emitter is not None:
            emitter.close()


def _json(results) -> None:
    from ..report.export import result_to_dict
    print_json([result_to_dict(r) for r in results])


def _report(results, report: Optional[Path], published=None) -> None:
    if report is None:
        return
    from ..report.html import write_report
    try:
        index = write_report(results, report, published=published)
    except OSError as e:  # the results are on stdout already; say what failed
        fail(f"--report {report}: {e.strerror or e}")
    note(f"report written to {index}")


def _ignore_sigint() -> None:
    """In compare's workers: Ctrl-C is the parent's to handle (it keeps what finished)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_presets(wl, presets: List[str], seed: Optional[int], params, progress: bool,
                 jobs: int, done, profile) -> None:
    """Run each preset, calling ``done(preset, result)`` as each finishes: in ``jobs``
    worker processes (no progress bar then), or one after the other."""
    if jobs > 1 and len(presets) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from ..sim import PolicyError
        from ..sim.runner import simulate
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(presets)),
                                   initializer=_ignore_sigint)
        try:
            futures = {pool.submit(simulate, wl, p, seed, params=params, profile=profile): p
                       for p in presets}
            for f in as_completed(futures):
                try:
                    done(futures[f], f.result())
                except PolicyError as e:
                    fail(str(e))
        except BaseException:
            # Ctrl-C or an error: do not wait for the presets still running
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return
    with _progress(progress) as prog:
        for p in presets:
            done(p, _run_one(wl, p, seed, params, prog, None, profile))


def _check_outputs(report: Optional[Path], trace: Optional[Path] = None,
                   checkpoint: Optional[Path] = None) -> None:
    if report is not None:
        check_writable(report, "--report", directory=True)
    if trace is not None:
        check_writable(trace, "--trace")
    if checkpoint is not None:
        check_writable(checkpoint, "--checkpoint")


def register(app: typer.Typer) -> None:
    """Add ``run``, ``compare``, ``workloads`` and ``policies`` to the tdpsim app."""

    @app.command()
    def run(workload: str = typer.Argument(..., metavar="WORKLOAD", help=WORKLOAD_HELP),
            policy: str = typer.Option("hp3-seed", "--policy", "-p", help=POLICY_HELP),
            seed: Optional[int] = typer.Option(None, "--seed", help=SEED_HELP),
            trace: Optional[Path] = typer.Option(None, "--trace", metavar="FILE",
                                                 help="Write the model's events as kernel "
                                                 "trace lines (trace-cmd report format)."),
            report: Optional[Path] = typer.Option(None, "--report", metavar="DIR",
                                                  help=REPORT_HELP),
            params: Optional[Path] = typer.Option(None, "--params", metavar="FILE",
                                                  help=PARAMS_HELP),
            memory_gib: Optional[float] = typer.Option(None, "--memory-gib", help=MEMORY_HELP),
            vcpus: Optional[int] = typer.Option(None, "--vcpus", help=VCPUS_HELP),
            progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
            kernel: Optional[str] = kernel_option(),
            json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
            ) -> None:
        """Run a workload under one policy preset.

        Prints its metrics; exit status 1 if the VM was bugged."""
        _check_presets([policy])
        wl = _load(workload, memory_gib, vcpus)
        profile = _profile(wl, kernel)
        cp = _params(params)
        _check_outputs(report, trace)
        with _progress(progress) as prog:
            result = _run_one(wl, policy, seed, cp, prog, trace, profile)
        if json_out:
            _json([result])
        else:
            from rich.console import Console

            from ..report.table import comparison_table
            Console(width=120).print(comparison_table([result]))
        _report([result], report)
        if trace is not None:
            note(f"trace written to {trace}")
        if not result.ok:
            raise typer.Exit(1)

    @app.command()
    def compare(workload: str = typer.Argument(..., metavar="WORKLOAD", help=WORKLOAD_HELP),
                policy: Optional[List[str]] = typer.Option(
                    None, "--policy", "-p", help="Policy preset; repeat to compare several "
                    "(default: the workload's `presets`)."),
                seed: Optional[int] = typer.Option(None, "--seed", help=SEED_HELP),
                report: Optional[Path] = typer.Option(None, "--report", metavar="DIR",
                                                      help=REPORT_HELP),
                params: Optional[Path] = typer.Option(None, "--params", metavar="FILE",
                                                      help=PARAMS_HELP),
                memory_gib: Optional[float] = typer.Option(None, "--memory-gib",
                                                           help=MEMORY_HELP),
                vcpus: Optional[int] = typer.Option(None, "--vcpus", help=VCPUS_HELP),
                progress: bool = typer.Option(True, "--progress/--no-progress",
                                              help=PROGRESS_HELP),
                show_all: bool = typer.Option(False, "--all", help="Every metric, not only "
                                              "the ones that differ."),
                jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes "
                                         "(0: one per CPU, at most one per preset; 1: serial "
                                         "with a progress bar)."),
                checkpoint: Optional[Path] = typer.Option(None, "--checkpoint",
                                                          metavar="FILE",
                                                          help=CHECKPOINT_HELP),
                kernel: Optional[str] = kernel_option(),
                json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
                ) -> None:
        """Run a workload under several policy presets, side by side.

        Every preset runs with the same seed; prints a verdict and the metrics that differ
        (deltas against the first preset).  Ctrl-C prints the presets already finished and
        keeps them in a checkpoint that the same command resumes from."""
        from . import resume

        wl = _load(workload, memory_gib, vcpus)
        presets = list(policy) if policy else list(wl.presets)
        _check_presets(presets)
        profile = _profile(wl, kernel)
        cp = _params(params)
        _check_outputs(report, checkpoint=checkpoint)
        key = resume.inputs_key(wl.raw, wl.seed if seed is None else seed, cp.rows(),
                                profile.name)
        saved: dict = {}
        if checkpoint is not None:
            try:
                saved = resume.load(checkpoint, key)
            except resume.CheckpointError as e:
                fail(str(e))
            reused = [p for p in presets if p in saved]
            if reused:
                note(f"resuming from {checkpoint}: {', '.join(reused)} already done")
        def done(p: str, result) -> None:
            saved[p] = result
            if checkpoint is not None:
                resume.save(checkpoint, key, saved)
        pending = [p for p in presets if p not in saved]
        try:
            _run_presets(wl, pending, seed, cp, progress, jobs or os.cpu_count() or 1, done,
                         profile)
        except KeyboardInterrupt:
            _interrupted(saved, presets, key, checkpoint, json_out, show_all, wl.published)
        results = [saved[p] for p in presets]
        _compare_out(results, json_out, show_all, wl.published)
        _report(results, report, wl.published)

    def _compare_out(results, json_out: bool, show_all: bool, published) -> None:
        if json_out:
            _json(results)
            return
        from rich.console import Console

        from ..report.table import compare_view
        console = Console()  # compare's layout is report/table.py's to decide
        console.print(compare_view(results, console.width, show_all=show_all,
                                   published=published))

    def _interrupted(saved: dict, presets: List[str], key: str, checkpoint: Optional[Path],
                     json_out: bool, show_all: bool, published) -> None:
        from . import resume

        done = [p for p in presets if p in saved]
        if done:
            _compare_out([saved[p] for p in done], json_out, show_all, published)
            path = checkpoint or DEFAULT_CHECKPOINT
            resume.save(path, key, saved)
            note(f"interrupted: {len(done)} of {len(presets)} presets finished "
                 f"({', '.join(done)}), kept in {path}; run the same command"
                 + (" again" if checkpoint else f" with --checkpoint {path}") + " to resume")
        else:
            note("interrupted before any preset finished")
        raise typer.Exit(EXIT_INTERRUPTED)

    @app.command()
    def workloads(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        """List the built-in workloads, one per line."""
        from ..sim import WorkloadError, builtin_names, builtin_workload

        print_catalog(builtin_names(), lambda n: builtin_workload(n).description,
                      WorkloadError, "description", json_out)

    @app.command()
    def policies(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        """List every policy preset and the switches it sets."""
        if json_out:
            from ..sim import PRESETS
            print_json([{"name": p.name, "summary": p.summary, "switches": dict(p.switches)}
                        for p in PRESETS.values()])
            return
        from ..report.table import presets_table
        out_console().print(presets_table())
