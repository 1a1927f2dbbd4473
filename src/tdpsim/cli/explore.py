"""``tdpsim explore``, ``tdpsim replay`` and ``tdpsim scenarios``: thin wrappers over
``tdpsim.explore``.

Every ``explore`` knob also reads an environment variable (``TDPSIM_EXPLORE_<OPTION>``,
loom-style).  Errors from the library (bad scenario, bad schedule, missing Ray) print one
clear line on stderr and exit with status 2 — never a traceback.  Results go to stdout;
the progress bar to stderr, and only on a terminal.  Ctrl-C stops the campaign after
saying how far it got; with ``--checkpoint`` the same command resumes it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from .common import (EXIT_INTERRUPTED, JSON_HELP, check_writable, fail, note, out_console,
                     print_catalog, print_json, require_pure_model)
from .kernel_opts import KERNEL_HELP, kernel_option, resolve_kernel

_ENV = "TDPSIM_EXPLORE_"
#: The strategies' names for --help without importing the explorer (checked against
#: tdpsim.explore.campaign.STRATEGIES by the tests).
STRATEGY_HELP = "random, pct (default), dfs or dpor."


def _params(items: Optional[List[str]]) -> dict:
    from ..explore.scenario import parse_param
    return dict(parse_param(p) for p in items or [])


def _progress_bar(enabled: bool, total: Optional[int]):
    """A stderr progress bar (a no-op one when disabled or stderr is not a terminal).
    Exhaustive strategies have no known total: they show the count alone."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    count = "{task.completed}" + ("/{task.total}" if total is not None else " executions")
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    TextColumn(count), TextColumn("{task.fields[rate]} exec/s"),
                    TextColumn("states {task.fields[states]}"), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True,
                    disable=not enabled or not sys.stderr.isatty())


def _summary(state, dt: float) -> dict[str, Any]:
    return {"executions": state.executions, "steps": state.steps, "seconds": round(dt, 3),
            "distinct_states": len(state.states), "distinct_traces": len(state.traces),
            "pruned": state.pruned, "exhausted": state.exhausted}


def _shrink_and_save(sch, out: Path, do_shrink: bool) -> str:
    from ..explore.runner import run_one
    from ..explore.schedule import replay
    from ..explore.shrink import shrink
    from ..explore.strategies.replay import ReplayScheduler

    msg = ""
    if do_shrink:
        sc2 = sch.load_scenario()
        rep = ReplayScheduler(sch.decisions(), sch.threads)
        rep.new_execution()
        res = run_one(sc2, rep)
        small = shrink(sc2, res)
        msg = f"shrunk {len(sch.choices)} -> {len(small)} decisions"
        sch.choices = [sch.threads[d] for d in small]
        shrunk = replay(sch, record=False)
        sch.failure = shrunk.failure.as_dict() if shrunk.failure else None
    try:
        sch.save(out)
    except OSError as e:  # checked before the campaign; this is e.g. a full disk
        print(sch.to_json(), end="")  # the schedule is the result: never lose it
        fail(f"--out {out}: {e.strerror or e} (the schedule is printed above)")
    return msg


def register(app: typer.Typer) -> None:
    """Add ``explore``, ``replay`` and ``scenarios`` to the tdpsim application."""

    @app.command("explore")
    def explore_cmd(
        scenario: str = typer.Argument(..., metavar="SCENARIO", help="A built-in scenario (see `tdpsim "
                                       "scenarios`) or a .toml path."),
        strategy: str = typer.Option("pct", "--strategy", "-s", envvar=_ENV + "STRATEGY",
                                     help=STRATEGY_HELP),
        executions: int = typer.Option(1000, "--executions", "-n", min=1,
                                       envvar=_ENV + "EXECUTIONS",
                                       help="Execution budget (random/pct: exact count)."),
        seed: int = typer.Option(0, "--seed", envvar=_ENV + "SEED",
                                 help="Seed of the random and PCT strategies."),
        depth: int = typer.Option(3, "--depth", min=1, envvar=_ENV + "DEPTH",
                                  help="PCT bug depth d (>= 1)."),
        preemption_bound: int = typer.Option(2, "--preemption-bound", min=-1,
                                             envvar=_ENV + "PREEMPTION_BOUND",
                                             help="DFS preemption bound (-1: none)."),
        param: Optional[List[str]] = typer.Option(None, "--param", "-p",
                                                  help="Override, e.g. "
                                                  "policy.mirror_promotion=unpatched."),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, envvar=_ENV + "JOBS",
                                 help="Local worker processes."),
        ray: Optional[str] = typer.Option(None, "--ray-address", "--ray", envvar=_ENV + "RAY",
                                          metavar="ADDRESS",
                                          help="Run chunks on the Ray cluster at ADDRESS "
                                          "(host:port, 'auto' = $RAY_ADDRESS or the running "
                                          "cluster, 'local' = start one here)."),
        chunk: int = typer.Option(250, "--chunk", min=1, envvar=_ENV + "CHUNK",
                                  help="Executions per work unit / checkpoint."),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", metavar="FILE",
                                                  envvar=_ENV + "CHECKPOINT",
                                                  help="Resume from / save to this JSON."),
        out: Path = typer.Option(Path("schedule.json"), "--out", "-o", metavar="FILE",
                                 envvar=_ENV + "OUT", help="Where a failing schedule goes."),
        do_shrink: bool = typer.Option(True, "--shrink/--no-shrink", envvar=_ENV + "SHRINK",
                                       help="Shrink a failing schedule before saving it."),
        progress: bool = typer.Option(True, "--progress/--no-progress",
                                      envvar=_ENV + "PROGRESS",
                                      help="Progress bar on stderr (terminal only)."),
        kernel: Optional[str] = kernel_option(KERNEL_HELP + " Same as --param vm.kernel=NAME."),
        json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    ) -> None:
        """Search a scenario's vCPU/host interleavings for failures.

        The first failing schedule is shrunk and saved (exit status 1)."""
        require_pure_model("explore")
        from ..explore.campaign import (STRATEGIES, CampaignSpec, CampaignState, elapsed_rate,
                                        run_campaign)
        from ..explore.engine import ExplorerError
        from ..explore.scenario import load_scenario
        from ..explore.schedule import parse_schedule
        from ..explore.strategies import pct_bound

        if strategy not in STRATEGIES:
            fail(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
        check_writable(out, "--out")
        if checkpoint is not None:
            check_writable(checkpoint, "--checkpoint")
        console = out_console()
        state = None
        t0 = time.perf_counter()
        try:
            params = _params(param)
            if kernel is not None:
                params["vm.kernel"] = resolve_kernel(kernel).name  # kept in saved schedules
            sc = load_scenario(scenario, params)
            spec = CampaignSpec(sc.source if scenario.endswith(".toml") else scenario, params,
                                strategy, executions, seed, depth,
                                None if preemption_bound < 0 else preemption_bound, chunk)
            if checkpoint is not None and checkpoint.exists():
                CampaignState.load(checkpoint, spec)  # a bad one is refused before any output
            head = (f"{sc.name}: {sc.summary}\npolicy mirror_promotion="
                    f"{sc.policy.mirror_promotion} threads={', '.join(sc.thread_names)} "
                    f"strategy={strategy}")
            if not json_out:
                console.print(head, markup=False)
            bar = _progress_bar(progress, executions if strategy in ("random", "pct") else None)
            with bar:
                task = bar.add_task("exploring", total=executions if strategy in
                                    ("random", "pct") else None, rate="-", states=0)
                seen: list = []

                def on_chunk(st, _r) -> None:
                    seen[:] = [st]
                    bar.update(task, completed=st.executions,
                               rate=f"{elapsed_rate(st, t0):,.0f}", states=len(st.states))

                try:
                    state = run_campaign(spec, jobs=jobs, ray_address=ray,
                                         checkpoint=checkpoint, on_chunk=on_chunk)
                except KeyboardInterrupt:
                    bar.stop()
                    done = seen[0].executions if seen else 0
                    note(f"interrupted after {done} executions (finished chunks)"
                         + (f"; they are in {checkpoint}: run the same command again to "
                            "resume" if checkpoint else "; use --checkpoint FILE to be "
                            "able to resume"))
                    raise typer.Exit(EXIT_INTERRUPTED)
            dt = time.perf_counter() - t0
            summary = _summary(state, dt)
            if not json_out:
                _print_summary(console, state, summary, sc, strategy, depth, dt, pct_bound,
                               checkpoint)
            if state.failure is None:
                if json_out:
                    print_json({**summary, "failure": None})
                else:
                    console.print("no failure found")
                return
            sch = parse_schedule(json.dumps(state.failure), "<campaign>")
            f = sch.failure or {}
            if not json_out:
                console.print(f"FAILURE {f.get('kind')}: {f.get('message')} "
                              f"(thread {f.get('thread')}, step {f.get('step')})", markup=False)
            shrunk = _shrink_and_save(sch, out, do_shrink)
            if json_out:
                print_json({**summary, "failure": sch.failure, "schedule": str(out),
                            "decisions": len(sch.choices)})
            else:
                if shrunk:
                    console.print(shrunk)
                console.print(f"schedule written to {out}; reproduce with: tdpsim replay {out}",
                              markup=False)
            raise typer.Exit(1)
        except ExplorerError as e:
            fail(str(e))

    def _print_summary(console, state, summary, sc, strategy, depth, dt, pct_bound,
                       checkpoint) -> None:
        # Rates count only the executions this run performed, not restored ones.
        restored = (f" ({state.restored[0]} restored from {checkpoint})"
                    if state.restored[0] else "")
        console.print(f"{state.executions} executions{restored}, {state.steps} steps; "
                      f"{state.executions_run} run in {dt:.2f}s "
                      f"({state.executions_run / dt if dt else 0:,.0f} exec/s, "
                      f"{state.steps_run / dt if dt else 0:,.0f} steps/s); "
                      f"{summary['distinct_states']} distinct final states, "
                      f"{summary['distinct_traces']} distinct traces"
                      + (f", {state.pruned} pruned" if state.pruned else ""))
        if strategy == "pct":
            k = max(1, state.steps // max(1, state.executions))
            n = len(sc.threads)
            console.print(f"PCT bound: P(find a depth-{depth} bug per execution) >= "
                          f"1/(n*k^(d-1)) = {pct_bound(n, k, depth):.3g} "
                          f"(n={n}, k~{k} steps)")
        if strategy in ("dfs", "dpor"):
            why = "yes" if state.exhausted else \
                "no (stopped at the first failure)" if state.failure is not None else \
                "no (budget ended)"
            console.print("exhausted: " + why)

    @app.command("replay")
    def replay_cmd(
        schedule: Path = typer.Argument(..., metavar="SCHEDULE", help="A schedule JSON written by explore."),
        perfetto: Optional[Path] = typer.Option(None, "--perfetto", metavar="FILE",
                                                help="Write Chrome trace-event JSON here."),
        full: bool = typer.Option(False, "--full", help="Show every step, not only "
                                  "context switches."),
        width: Optional[int] = typer.Option(None, "--width", min=12,
                                            help="Column width of each thread in the "
                                            "diagram (default: fit the terminal)."),
        json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    ) -> None:
        """Re-run a saved schedule and print its interleaving.

        Deterministic; exit status 1 if the schedule fails."""
        require_pure_model("replay")
        from ..explore.engine import ExplorerError
        from ..explore.render import diagram, perfetto_json
        from ..explore.schedule import atomic_write, load_schedule, replay

        if perfetto is not None:
            check_writable(perfetto, "--perfetto")
        try:
            sch = load_schedule(schedule)
            res = replay(sch, record=True)
        except ExplorerError as e:
            fail(str(e))
        console = out_console()
        if json_out:
            print_json({"scenario": sch.scenario, "params": sch.params,
                        "decisions": len(sch.choices), "steps": res.steps,
                        "failure": res.failure.as_dict() if res.failure else None,
                        "trace": [{"step": st.index, "thread": res.thread_names[st.tid],
                                   "kind": st.kind, "funcs": list(st.funcs),
                                   "detail": st.detail} for st in res.trace]})
        else:
            console.print(f"scenario {sch.scenario} params {sch.params} "
                          f"({len(sch.choices)} decisions, {res.steps} steps)", markup=False)
            col = width or max(12, (console.width - 6) // max(1, len(res.thread_names)))
            console.print(diagram(res, width=col, only_switches=not full), markup=False)
        if perfetto is not None:
            atomic_write(perfetto, perfetto_json(res, sch.scenario))
            note(f"Perfetto trace written to {perfetto}")
        if res.failure is None and not json_out:
            console.print("no failure")
        raise typer.Exit(1 if res.failure is not None else 0)

    @app.command("scenarios")
    def scenarios_cmd(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        """List the built-in explorer scenarios, one per line."""
        from ..explore.engine import ExplorerError
        from ..explore.scenario import builtin_names, load_scenario

        print_catalog(builtin_names(), lambda n: load_scenario(n).summary, ExplorerError,
                      "summary", json_out)
