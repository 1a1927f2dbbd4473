"""``tdpsim equiv [A B]``: do policy variants decide the same on every fault?

Without arguments every pair of the seed patch's variants is checked.  Output is one
verdict line per pair ("equivalent on N faults, M interleavings" or where they first
differ); for a single pair that differs, the shrunk scenario and both sides' events of
the first unit they disagree on.  Exit status 0 when every pair is equivalent, 1 if not.
"""

from __future__ import annotations

import difflib
import sys
from typing import List, Optional

import typer

from .common import require_pure_model

# The model, the equivalence checker and rich are imported by the command itself, so
# that `tdpsim --help` stays fast (cli/main.py).

_LEVEL = {1: "4K", 2: "2M", 3: "1G", 4: "512G"}


def _ret(r: int) -> str:
    from ..model.mmu_internal import ERRNO_NAMES, RET_PF_NAMES
    return RET_PF_NAMES.get(r) or f"-{ERRNO_NAMES.get(-r, -r)}"


def describe_event(ev: tuple) -> str:
    """One recorded event in the kernel's words."""
    from ..model.tdx_module.status import status_name
    kind = ev[0]
    if kind == "goal":
        return f"kvm_mmu_hugepage_adjust: goal_level {_LEVEL.get(ev[1], ev[1])}"
    if kind == "lowered":
        return (f"disallowed_hugepage_adjust at {_LEVEL.get(ev[1], ev[1])}: goal_level → "
                f"{_LEVEL.get(ev[2], ev[2])}")
    if kind == "spte":
        return f"SPTE gfn {ev[1]:#x} {_LEVEL.get(ev[2], ev[2])}: {ev[3]:#x} → {ev[4]:#x}"
    if kind == "seamcall":
        return f"SEAMCALL {ev[1]} gfn {ev[2]:#x} level {ev[3]} → {status_name(ev[4])}"
    if kind == "hook":
        args = ", ".join(f"{a:#x}" if isinstance(a, int) and not isinstance(a, bool)
                         else str(a) for a in ev[2:])
        return f"x86_ops.{ev[1]}({args})"
    if kind == "ret":
        return f"return {_ret(ev[1])}"
    if kind == "KVM_BUG_ON":
        return f"KVM_BUG_ON in {ev[1]}: {ev[2]}"
    return " ".join(str(x) for x in ev)


def describe_unit(u: Optional[tuple]) -> str:
    if u is None:
        return "(nothing: the run ended)"
    kind, head = u[0], u[1]
    if kind.startswith("fault"):
        vcpu, gfn, private, _ = head
        return f"{kind} on vCPU {vcpu}, gfn {gfn:#x} ({'private' if private else 'shared'})"
    if kind == "end":
        return "end of run: " + " ".join(str(x) for x in u[2])
    return f"host work on thread {head[0]}" if head else kind


def _stream_lines(u: Optional[tuple], other: Optional[tuple]) -> list[str]:
    """The unit's events; ``≠`` marks those the other side does not have (difflib)."""
    events = list(u[2]) if u is not None else []
    theirs = list(other[2]) if other is not None else []
    shared: set[int] = set()
    for block in difflib.SequenceMatcher(a=events, b=theirs, autojunk=False).get_matching_blocks():
        shared.update(range(block.a, block.a + block.size))
    return [f"  {' ' if k in shared else '≠'} {describe_event(ev)}"
            for k, ev in enumerate(events)]


def _summary(v: "PairVerdict") -> str:
    exhausted = all(v.exhausted.values()) if v.exhausted else True
    inter = f"{v.interleavings} interleavings" + ("" if exhausted else " (DPOR budget)")
    if v.equivalent:
        return f"{v.a} ≡ {v.b}: equivalent on {v.faults} faults, {inter}"
    first = v.divergences[0]
    where = ", ".join(d.target for d in v.divergences)
    return (f"{v.a} ≢ {v.b}: differ in {len(v.divergences)} target(s) ({where}); first: "
            f"{first.target}, unit {first.index}: {describe_unit(first.a)}")


def _details(v: "PairVerdict", d: "Divergence", console) -> None:
    console.print(f"\nfirst divergence: {d.target}, unit {d.index}, shrunk to")
    for line in d.minimal:
        console.print("  " + line, highlight=False)
    for name, u, other in ((v.a, d.a, d.b), (v.b, d.b, d.a)):
        console.print(f"{name}: {describe_unit(u)}", highlight=False)
        for line in _stream_lines(u, other):
            console.print(line, highlight=False)


def register(app: typer.Typer) -> None:

    @app.command()
    def equiv(variants: Optional[List[str]] = typer.Argument(
                  None, help="Two policy presets (default: every pair of the seed patch's "
                  "variants, see `tdpsim policies`)."),
              budget: Optional[int] = typer.Option(None, "--budget", min=1,
                                                   help="DPOR executions per scenario and "
                                                   "variant (default: the checker's)."),
              workload: Optional[List[str]] = typer.Option(
                  None, "--workload", "-w", help="Only these workloads (default: all)."),
              scenario: Optional[List[str]] = typer.Option(
                  None, "--scenario", "-s", help="Only these scenarios (default: all)."),
              jobs: int = typer.Option(2, "--jobs", "-j", help="Worker processes for the "
                                       "workload runs."),
              ) -> None:
        """Check that policy variants decide the same on every fault.

        Runs the variants over every built-in workload and every DPOR interleaving of the
        built-in scenarios; compares each fault's decisions (goal levels, SPTEs written,
        external hooks, SEAMCALLs, return value)."""
        require_pure_model("equiv")
        from rich.console import Console

        from ..equiv import DEFAULT_BUDGET, Targets, check
        from ..sim import SEED_VARIANTS, is_preset
        from ..sim.policies import PRESETS

        budget = DEFAULT_BUDGET if budget is None else budget
        names = list(variants) if variants else list(SEED_VARIANTS)
        if len(names) < 2:
            typer.echo("error: equiv needs two presets (or none for every seed variant)",
                       err=True)
            raise typer.Exit(2)
        for n in names:
            if not is_preset(n):
                typer.echo(f"error: unknown policy preset {n!r}; known: "
                           f"{', '.join(PRESETS)}", err=True)
                raise typer.Exit(2)
        builtin = Targets.builtin()
        targets = Targets(list(workload) if workload else builtin.workloads,
                          list(scenario) if scenario else builtin.scenarios)
        err = Console(stderr=True)
        say = (lambda msg: err.print(msg, style="dim")) if sys.stderr.isatty() else None
        verdicts = check(names, targets, budget=budget, jobs=jobs, progress=say)
        console = Console()
        for v in verdicts:
            console.print(_summary(v), highlight=False)
        if len(verdicts) == 1 and not verdicts[0].equivalent:
            _details(verdicts[0], verdicts[0].divergences[0], console)
        if not all(v.equivalent for v in verdicts):
            raise typer.Exit(1)
