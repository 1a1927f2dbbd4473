"""``tdpsim kvm-check``: tiny guests on the host's /dev/kvm against the model.

Exit codes: 0 every row agrees (skipped rows aside), 1 some row disagrees, 2 KVM cannot
be used here (one line on stderr says why), 3 a guest or ioctl failed unexpectedly.
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..kvmcheck.compare import CHECK_MATRIX, CheckRow, report_to_json, run_kvm_check
from ..kvmcheck.host_matrix import host_facts
from ..kvmcheck.model_side import SHADOW, mmu_kind
from ..kvmcheck.vm import DEFAULT_KVM_PATH, NATIVE_EXEC_MSR, KvmCheckError, KvmUnavailable

__all__ = ["register", "kvm_check"]

OK, BAD = "✔", "✘"


def _counts(pages, pf) -> str:
    return "—" if pages is None else f"{pages}  (pf_fixed {pf})"


def _native_line(rows: List[CheckRow]) -> str:
    ran = [r for r in rows if r.native is not None]
    took = [r for r in ran if r.native.took_effect]
    msr = f"native-execution MSR {NATIVE_EXEC_MSR:#x} (undocumented)"
    if not ran:
        return f"{msr}: not probed"
    if len(took) == len(ran):
        return f"{msr}: took effect in all {len(ran)} guests (vCPUs ran natively)"
    if not took:
        n = ran[0].native
        return (f"{msr}: did NOT take effect (accepted={n.accepted}, readback="
                f"{n.readback if n.readback is None else hex(n.readback)}); the vCPUs emulated "
                f"and KVM created no SPTEs, so the kernel counts below are meaningless")
    return f"{msr}: took effect in {len(took)} of {len(ran)} guests"


def _print_report(console: Console, rows: List[CheckRow], facts: dict) -> None:
    params = facts.get("kvm_params", {})
    kind = mmu_kind(params)
    console.print(f"host: Linux {facts.get('kernel_release', '?')}, "
                  f"{', '.join(facts.get('vendor_modules', ())) or 'no vendor module'}; "
                  f"kvm.tdp_mmu={params.get('tdp_mmu', '?')} nx_huge_pages="
                  f"{params.get('nx_huge_pages', '?')} eager_page_split="
                  f"{params.get('eager_page_split', '?')}")
    console.print("model: " + ("shadow MMU (tdpsim.model.shadow_mmu)" if kind == SHADOW
                               else "TDP MMU (tdpsim.model.tdp_mmu)"))
    console.print(_native_line(rows))
    table = Table(title="kvm-check: window SPTEs after the last phase, pf_fixed over all phases",
                  title_justify="left")
    table.add_column("scenario")
    table.add_column("kernel")
    table.add_column("model")
    table.add_column("match", justify="center")
    for r in rows:
        mark = ("skipped" if r.match is None
                else f"[green]{OK}[/]" if r.match else f"[red]{BAD}[/]")
        table.add_row(r.name, _counts(r.kernel, r.kernel_pf_fixed) if not r.skipped else "—",
                      _counts(r.model, r.model_pf_fixed), mark)
    console.print(table)
    for r in rows:
        if r.skipped:
            console.print(f"[dim]{r.name}: skipped: {r.skipped}[/]")
        for m in r.mismatches:
            console.print(f"[red]{r.name}[/]: {m}")
    n_bad = sum(r.match is False for r in rows)
    n_ok = sum(r.match is True for r in rows)
    console.print(f"{n_ok} agree, {n_bad} disagree, {sum(r.match is None for r in rows)} skipped")


def kvm_check(
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (machines)."),
    only: Optional[List[str]] = typer.Option(None, "--only", metavar="NAME",
                                             help="Run only this scenario (repeatable)."),
    repeats: int = typer.Option(2, "--repeats", min=1,
                                help="Fresh VMs per scenario on the host (repeatability check)."),
    kvm_path: str = typer.Option(DEFAULT_KVM_PATH, "--kvm-path", hidden=True),
) -> None:
    """Run a matrix of tiny guests on the host's /dev/kvm, read KVM's own statistics, run
    the same scenarios through the model (shadow or TDP MMU, as the host's kvm.tdp_mmu
    says) and show where they agree."""
    matrix = CHECK_MATRIX
    if only:
        names = {s.name for s in CHECK_MATRIX}
        unknown = [n for n in only if n not in names]
        if unknown:
            typer.echo(f"kvm-check: unknown scenario {', '.join(unknown)}; known: "
                       f"{', '.join(sorted(names))}", err=True)
            raise typer.Exit(2)
        matrix = tuple(s for s in CHECK_MATRIX if s.name in only)
    facts = host_facts()
    try:
        rows = run_kvm_check(matrix, repeats=repeats, kvm_path=kvm_path, facts=facts)
    except KvmUnavailable as e:
        typer.echo(f"kvm-check: {e}", err=True)
        raise typer.Exit(2)
    except KvmCheckError as e:
        typer.echo(f"kvm-check: the host run failed: {e}", err=True)
        raise typer.Exit(3)
    if json_out:
        typer.echo(json.dumps(report_to_json(rows, facts), indent=1))
    else:
        _print_report(Console(), rows, facts)
    if any(r.match is False for r in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``kvm-check`` command to *app*."""
    app.command("kvm-check")(kvm_check)
