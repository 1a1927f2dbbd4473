"""``tdpsim kvm-check``: tiny guests on the host's /dev/kvm against the model.

Exit codes: 0 every row agrees (skipped rows aside), 1 some row disagrees, 2 KVM cannot
be used here (one line on stderr says why), 3 a guest or ioctl failed unexpectedly.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import JSON_HELP, fail, out_console, print_json
from .kernel_opts import kernel_option, resolve_kernel

__all__ = ["register", "kvm_check"]

OK, BAD = "✔", "✘"


def _counts(pages, pf) -> str:
    return "—" if pages is None else f"{pages}  (pf_fixed {pf})"


def _native_line(rows) -> str:
    from ..kvmcheck.vm import NATIVE_EXEC_MSR

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


def _print_report(console, rows, facts: dict) -> None:
    from rich.table import Table

    from ..kvmcheck.model_side import SHADOW, mmu_kind

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


def _print_oracle(console, rows: list, facts: dict, failures: list[str]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"oracle: Linux {facts.get('kernel_release', '?')} under QEMU TCG, cmdline "
                  f"\"{facts.get('cmdline', '?')}\"; model: TDP MMU under NPT")
    table = Table(title="kvm-check --qemu: the kernel's stats and events against the model",
                  title_justify="left")
    for col in ("scenario", "kernel", "model", "stats", "events", "replay anomalies"):
        table.add_column(col)

    def mark(v):
        return "—" if v is None else f"[green]{OK}[/]" if v else f"[red]{BAD}[/]"
    for r in rows:
        st = r.stats
        table.add_row(r.name, "error" if st is None else _counts(st.kernel, st.kernel_pf_fixed),
                      "—" if st is None else _counts(st.model, st.model_pf_fixed),
                      mark(r.stats_match), mark(r.events_match) + f" {r.events_compared}",
                      "—" if r.replay_anomalies is None else str(r.replay_anomalies))
    console.print(table)
    for r in rows:
        for m in (r.stats.mismatches if r.stats else ()):
            console.print(f"[red]{r.name}[/] stats: {escape(m)}")
        for m in r.event_mismatches:
            console.print(f"[red]{r.name}[/] events: {escape(m)}")
        if r.error:
            console.print(f"[red]{r.name}[/] error: {escape(r.error)}")
    for f in failures:
        console.print(f"[red]{escape(f)}[/]")
    ran = [r for r in rows if r.stats is not None and not r.stats.skipped]
    console.print(f"{len(rows)} rows: {sum(r.stats_match is True for r in ran)} match on stats, "
                  f"{sum(r.events_match is True for r in ran)} on events, "
                  f"{sum(r.error is not None for r in rows)} errors")


def _oracle_json(rows: list, facts: dict, failures: list[str]) -> dict:
    return {"format": "tdpsim-kvm-check-oracle/1", "facts": facts, "failures": failures,
            "rows": [{"name": r.name, "error": r.error, "stats_match": r.stats_match,
                      "events_match": r.events_match, "events_compared": r.events_compared,
                      "uncompared_events": r.uncompared, "replay_anomalies": r.replay_anomalies,
                      "replay_anomaly_kinds": r.replay_kinds,
                      "stats_mismatches": list(r.stats.mismatches) if r.stats else [],
                      "event_mismatches": r.event_mismatches} for r in rows]}


def _oracle(qemu: Optional[str], recorded: Optional[str], out: Optional[str], only, timeout,
            kernel_image, modules, json_out: bool, profile=None) -> None:
    from ..kvmcheck.oracle import check_run          # noqa: PLC0415 - only for --qemu
    from ..kvmcheck.qemu import OracleError, run_oracle  # noqa: PLC0415
    failures: list[str] = []
    if qemu:
        out = out or f"oracle-{qemu}"
        try:
            run = run_oracle(qemu, out, only=only or (), timeout=timeout, image=kernel_image,
                             modules=modules)
        except OracleError as e:
            fail(str(e))
        failures = run.failures
        if not run.rows:
            for f in failures:
                typer.echo(f, err=True)
            raise typer.Exit(3)
        recorded = out
    try:
        _run, rows = check_run(recorded, profile=profile)
    except (OSError, ValueError) as e:
        fail(f"kvm-check: cannot read the oracle run in {recorded}: {e}")
    if json_out:
        print_json(_oracle_json(rows, _run.facts, failures))
    else:
        _print_oracle(out_console(), rows, _run.facts, failures)
    if failures or any(r.stats_match is False or r.events_match is False or r.error
                       for r in rows):
        raise typer.Exit(1)


def kvm_check(
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
    qemu: Optional[str] = typer.Option(
        None, "--qemu", metavar="KERNEL",
        help="Boot this Debian kernel (6.1, 6.12 or a release) under QEMU TCG and run the "
             "matrix on its TDP MMU (see tdpsim.kvmcheck.qemu); needs qemu-system-x86, "
             "busybox-static and the linux-image package.  6.12-swprot: the small 6.12 "
             "build with KVM_X86_SW_PROTECTED_VM and the private-memory rows (built by "
             "benchmarks/oracle_record.py 6.12-swprot)."),
    recorded: Optional[str] = typer.Option(
        None, "--recorded", metavar="DIR",
        help="Check an oracle run (or fixture) already on disk against the model."),
    out: Optional[str] = typer.Option(None, "--out", metavar="DIR",
                                      help="--qemu: where the run goes (default oracle-KERNEL)."),
    timeout: float = typer.Option(1800, "--timeout", help="--qemu: seconds before the guest "
                                  "counts as hung."),
    kernel_image: Optional[str] = typer.Option(None, "--kernel-image",
                                               help="--qemu: a kernel you built (with --modules)."),
    modules: Optional[str] = typer.Option(None, "--modules",
                                          help="--qemu: its /lib/modules/<release> directory."),
    only: Optional[List[str]] = typer.Option(None, "--only", metavar="NAME",
                                             help="Run only this scenario (repeatable)."),
    repeats: int = typer.Option(2, "--repeats", min=1,
                                help="Fresh VMs per scenario on the host (repeatability check)."),
    kvm_path: Optional[str] = typer.Option(None, "--kvm-path", hidden=True,
                                           help="The KVM device (default /dev/kvm)."),
    kernel: Optional[str] = kernel_option("Kernel generation the model runs as (6.1, 6.12, "
                                          "6.18+hp-v3); default: the host's (or the "
                                          "recorded run's) kernel release."),
) -> None:
    """Compare this host's /dev/kvm with the model on tiny guests.

    Runs a matrix of tiny guests on the host's /dev/kvm, reads KVM's own statistics, runs
    the same scenarios through the model (shadow or TDP MMU, as the host's kvm.tdp_mmu
    says) and shows where they agree.  With --qemu / --recorded: the QEMU TCG oracle."""
    profile = None if kernel is None else resolve_kernel(kernel)
    if qemu or recorded:
        _oracle(qemu, recorded, out, only, timeout, kernel_image, modules, json_out, profile)
        return
    from ..kvmcheck.compare import CHECK_MATRIX, report_to_json, run_kvm_check
    from ..kvmcheck.host_matrix import host_facts
    from ..kvmcheck.vm import DEFAULT_KVM_PATH, KvmCheckError, KvmUnavailable

    matrix = CHECK_MATRIX
    if only:
        names = {s.name for s in CHECK_MATRIX}
        unknown = [n for n in only if n not in names]
        if unknown:
            fail(f"kvm-check: unknown scenario {', '.join(unknown)}; known: "
                 f"{', '.join(sorted(names))}")
        matrix = tuple(s for s in CHECK_MATRIX if s.name in only)
    facts = host_facts()
    try:
        rows = run_kvm_check(matrix, repeats=repeats, kvm_path=kvm_path or DEFAULT_KVM_PATH,
                             facts=facts, profile=profile)
    except KvmUnavailable as e:
        fail(f"kvm-check: {e}")
    except KvmCheckError as e:
        fail(f"kvm-check: the host run failed: {e}", 3)
    if json_out:
        print_json(report_to_json(rows, facts))
    else:
        _print_report(out_console(), rows, facts)
    if any(r.match is False for r in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``kvm-check`` command to *app*."""
    app.command("kvm-check")(kvm_check)
