"""``tdpsim explore`` and ``tdpsim replay``: thin wrappers over ``tdpsim.explore``.

Every knob also reads an environment variable (``TDPSIM_EXPLORE_<OPTION>``, loom-style).
Errors from the library (bad scenario, bad schedule, missing Ray) print one clear line and
exit with status 2 — never a traceback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..explore.campaign import STRATEGIES, CampaignSpec, elapsed_rate, run_campaign
from ..explore.engine import ExplorerError
from ..explore.render import diagram, perfetto_json
from ..explore.scenario import builtin_names, load_scenario, parse_param
from ..explore.schedule import atomic_write, load_schedule, parse_schedule, replay
from ..explore.shrink import shrink
from ..explore.strategies import pct_bound
from ..explore.strategies.replay import ReplayScheduler
from ..explore.runner import run_one
from .kernel_opts import KERNEL_HELP, kernel_option, resolve_kernel

_ENV = "TDPSIM_EXPLORE_"


def _params(items: Optional[List[str]]) -> dict:
    return dict(parse_param(p) for p in items or [])


def _die(console: Console, msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add ``explore`` and ``replay`` to the tdpsim application."""

    @app.command("explore")
    def explore_cmd(
        scenario: str = typer.Argument(..., help="Scenario name (" + ", ".join(builtin_names())
                                       + ") or a .toml path."),
        strategy: str = typer.Option("pct", "--strategy", "-s", envvar=_ENV + "STRATEGY",
                                     help="One of " + ", ".join(STRATEGIES) + "."),
        executions: int = typer.Option(1000, "--executions", "-n",
                                       envvar=_ENV + "EXECUTIONS",
                                       help="Execution budget (random/pct: exact count)."),
        seed: int = typer.Option(0, "--seed", envvar=_ENV + "SEED"),
        depth: int = typer.Option(3, "--depth", envvar=_ENV + "DEPTH", help="PCT bug depth d."),
        preemption_bound: int = typer.Option(2, "--preemption-bound",
                                             envvar=_ENV + "PREEMPTION_BOUND",
                                             help="DFS preemption bound (-1: none)."),
        param: Optional[List[str]] = typer.Option(None, "--param", "-p",
                                                  help="Override, e.g. "
                                                  "policy.mirror_promotion=unpatched."),
        jobs: int = typer.Option(1, "--jobs", "-j", envvar=_ENV + "JOBS",
                                 help="Local worker processes."),
        ray: Optional[str] = typer.Option(None, "--ray-address", "--ray", envvar=_ENV + "RAY",
                                          help="Run chunks on the Ray cluster at ADDRESS "
                                          "(host:port, 'auto' = $RAY_ADDRESS or the running "
                                          "cluster, 'local' = start one here)."),
        chunk: int = typer.Option(250, "--chunk", envvar=_ENV + "CHUNK",
                                  help="Executions per work unit / checkpoint."),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint",
                                                  envvar=_ENV + "CHECKPOINT",
                                                  help="Resume from / save to this JSON."),
        out: Path = typer.Option(Path("schedule.json"), "--out", "-o",
                                 envvar=_ENV + "OUT", help="Where a failing schedule goes."),
        do_shrink: bool = typer.Option(True, "--shrink/--no-shrink", envvar=_ENV + "SHRINK"),
        kernel: Optional[str] = kernel_option(KERNEL_HELP + " Same as --param vm.kernel=NAME."),
        progress: bool = typer.Option(True, "--progress/--no-progress",
                                      envvar=_ENV + "PROGRESS"),
    ) -> None:
        """Explore the interleavings of a scenario's threads; save and shrink the first
        failing schedule."""
        console = Console()
        try:
            params = _params(param)
            if kernel is not None:
                params["vm.kernel"] = resolve_kernel(kernel).name  # kept in saved schedules
            sc = load_scenario(scenario, params)
            spec = CampaignSpec(sc.source if scenario.endswith(".toml") else scenario, params,
                                strategy, executions, seed, depth,
                                None if preemption_bound < 0 else preemption_bound, chunk)
            console.print(f"[bold]{sc.name}[/]: {sc.summary}", highlight=False)
            console.print(f"policy mirror_promotion={sc.policy.mirror_promotion} "
                          f"threads={', '.join(sc.thread_names)} strategy={strategy}",
                          highlight=False)
            t0 = time.perf_counter()
            bar = Progress(TextColumn("[progress.description]{task.description}"),
                           BarColumn(), TextColumn("{task.completed}/{task.total}"),
                           TextColumn("{task.fields[rate]} exec/s"),
                           TextColumn("states {task.fields[states]}"),
                           TimeElapsedColumn(), console=console, disable=not progress)
            with bar:
                total = executions if strategy in ("random", "pct") else None
                task = bar.add_task("exploring", total=total, rate="-", states=0)

                def on_chunk(state, _r) -> None:
                    bar.update(task, completed=state.executions,
                               rate=f"{elapsed_rate(state, t0):,.0f}", states=len(state.states))

                state = run_campaign(spec, jobs=jobs, ray_address=ray,
                                     checkpoint=checkpoint, on_chunk=on_chunk)
            dt = time.perf_counter() - t0
            # Rates count only the executions this run performed, not restored ones.
            restored = (f" ({state.restored[0]} restored from {checkpoint})"
                        if state.restored[0] else "")
            console.print(f"{state.executions} executions{restored}, {state.steps} steps; "
                          f"{state.executions_run} run in {dt:.2f}s "
                          f"({state.executions_run / dt if dt else 0:,.0f} exec/s, "
                          f"{state.steps_run / dt if dt else 0:,.0f} steps/s); "
                          f"{len(state.states)} distinct final states, {len(state.traces)} "
                          f"distinct traces" + (f", {state.pruned} pruned" if state.pruned
                                                else ""), highlight=False)
            if strategy == "pct":
                k = max(1, state.steps // max(1, state.executions))
                n = len(sc.threads)
                console.print(f"PCT bound: P(find a depth-{depth} bug per execution) >= "
                              f"1/(n*k^(d-1)) = {pct_bound(n, k, depth):.3g} "
                              f"(n={n}, k~{k} steps)", highlight=False)
            if strategy in ("dfs", "dpor"):
                console.print("exhausted: " + ("yes" if state.exhausted else
                                               "no (budget ended)"), highlight=False)
            if state.failure is None:
                console.print("[green]no failure found[/]")
                return
            sch = parse_schedule(__import__("json").dumps(state.failure), "<campaign>")
            f = sch.failure or {}
            console.print(f"[bold red]FAILURE[/] {f.get('kind')}: {f.get('message')} "
                          f"(thread {f.get('thread')}, step {f.get('step')})", highlight=False)
            if do_shrink:
                sc2 = sch.load_scenario()
                rep = ReplayScheduler(sch.decisions(), sch.threads)
                rep.new_execution()
                res = run_one(sc2, rep)
                small = shrink(sc2, res)
                console.print(f"shrunk {len(sch.choices)} -> {len(small)} decisions",
                              highlight=False)
                sch.choices = [sch.threads[d] for d in small]
                shrunk = replay(sch, record=False)
                sch.failure = shrunk.failure.as_dict() if shrunk.failure else None
            sch.save(out)
            console.print(f"schedule written to {out}; reproduce with: tdpsim replay {out}",
                          highlight=False)
            raise typer.Exit(1)
        except ExplorerError as e:
            _die(console, str(e))

    @app.command("replay")
    def replay_cmd(
        schedule: Path = typer.Argument(..., help="A schedule JSON written by explore."),
        perfetto: Optional[Path] = typer.Option(None, "--perfetto",
                                                help="Write Chrome trace-event JSON here."),
        full: bool = typer.Option(False, "--full", help="Show every step, not only "
                                  "context switches."),
        width: int = typer.Option(44, "--width", help="Column width of the diagram."),
    ) -> None:
        """Re-run a schedule deterministically and print its interleaving diagram."""
        console = Console(width=max(80, width * 4 + 8))
        try:
            sch = load_schedule(schedule)
            res = replay(sch, record=True)
        except ExplorerError as e:
            _die(console, str(e))
            return
        console.print(f"scenario {sch.scenario} params {sch.params} "
                      f"({len(sch.choices)} decisions, {res.steps} steps)", highlight=False)
        console.print(diagram(res, width=width, only_switches=not full), highlight=False,
                      markup=False, soft_wrap=True)
        if perfetto is not None:
            atomic_write(perfetto, perfetto_json(res, sch.scenario))
            console.print(f"Perfetto trace written to {perfetto}", highlight=False)
        if res.failure is None:
            console.print("no failure")
        raise typer.Exit(1 if res.failure is not None else 0)
