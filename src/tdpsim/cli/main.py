"""``tdpsim`` — the typer application.  Engines' commands register themselves from their
own modules (``register(app)``) so this file stays a thin table of contents."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import List, Optional

import typer
from rich.table import Table

from ..model.dump import root_name, walk_root
from ..model.kvm import RecordingExternalOps
from ..model.mmu_fault import ept_violation_error_code, kvm_mmu_do_page_fault
from ..model.mmu_internal import ERRNO_NAMES, RET_PF_NAMES
from ..model.policy import MIRROR_PROMOTION_CHOICES, Policy
from ..model.vmm import VmConfig, create_vm
from ..scenarios.seed import run_length, run_seed
from .kernel_opts import (kernel_option, resolve_kernel, resolve_vendor, root_level_option,
                          vendor_option)
from .render import dump_table, make_console

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Executable model of KVM's TDP MMU, TDX mirror roots and the TDX "
                       "module's Secure-EPT.")

# Engine commands living in their own modules; each exposes register(app).
COMMAND_MODULES = ("sim", "explore", "replay_trace", "kvm_check", "equiv")


def _register_engine_commands() -> None:
    for name in COMMAND_MODULES:
        module_name = f"{__package__}.{name}"
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(app)


def _breakable_status(failed: str) -> str:
    """"PROMOTE → TDX_X|RCX" → "PROMOTE → TDX_X (RCX)": lets a narrow column wrap before
    the operand instead of folding the status name."""
    name, bar, operand = failed.partition("|")
    return f"{name} ({operand})" if bar else name


@app.command()
def seed(dump: bool = typer.Option(False, "--dump", help="Also print each root's SPTEs "
                                   "around the converted page."),
         kernel: Optional[str] = kernel_option()) -> None:
    """Run the seed patch review's scenario on a direct root and on a TD's mirror root
    with the patch, without it, and with a promoting KVM; print the outcomes side by side.
    Kernels without TDX run the direct-root variant only."""
    console = make_console()
    profile = resolve_kernel(kernel)
    outcomes = run_seed(profile)
    if kernel is not None:
        console.print(f"kernel {profile.name}"
                      + ("" if profile.tdx_vm_type else ": no TDX, direct root only"), markup=False)
    table = Table(title="Seed scenario: a fault that may map 2M over an existing page table",
                  title_justify="left")
    table.add_column("")
    for o in outcomes:
        table.add_column(o.variant, overflow="fold")
    rows = [
        ("root", [o.root for o in outcomes]),
        ("mirror_promotion", [o.policy for o in outcomes]),
        ("page mapped at", [o.final_level for o in outcomes]),
        ("pages_4k / 2m / 1g", [" / ".join(map(str, o.pages)) for o in outcomes]),
        ("tdp_mmu_pages", [str(o.tdp_mmu_pages) for o in outcomes]),
        ("TLB flush requests", [str(o.tlb_flush_requests) for o in outcomes]),
        ("last fault SEAMCALLs", [" ".join(run_length(o.final_seamcalls)) or "—"
                                  for o in outcomes]),
        ("failed SEAMCALLs", ["; ".join(map(_breakable_status, o.failed_seamcalls)) or "none"
                              for o in outcomes]),
        ("S-EPT at the page", [o.sept_entry for o in outcomes]),
        ("VM bugged", ["yes" if o.vm_bugged else "no" for o in outcomes]),
        ("KVM_BUG_ONs in order", [", ".join(b.split(":")[0].removeprefix("KVM_BUG_ON in ")
                                            for b in o.bugs) or "—" for o in outcomes]),
        ("WARN sites", [", ".join(w.split(":")[0].removeprefix("WARN in ") for w in o.warnings)
                        or "—" for o in outcomes]),
    ]
    for label, values in rows:
        table.add_row(label, *values)
    console.print(table)
    for o in outcomes:
        console.print(f"[bold]{o.variant}[/bold]: " + "; ".join(f"{a} → {b}" for a, b in o.steps))
    if dump:
        for o in outcomes:
            console.print(dump_table(f"{o.variant}: {o.root} root around the converted page",
                                     o.dump))


def _parse_access(spec: str) -> tuple[int, str]:
    """``GFN[:FLAGS]`` with flags from w (write), x (exec), s (shared), r (read only)."""
    gfn_text, _, flags = spec.partition(":")
    try:
        gfn = int(gfn_text, 0)
    except ValueError:
        raise typer.BadParameter(f"{spec!r}: the gfn must be a number like 0x400") from None
    bad = set(flags) - set("wxsr")
    if bad:
        raise typer.BadParameter(f"{spec!r}: unknown flag(s) {''.join(sorted(bad))}; use w, x, s, r")
    return gfn, flags or "w"


@app.command()
def fault(accesses: List[str] = typer.Argument(..., help="GFN[:FLAGS] per fault; flags w "
                                                "(write, default), r (read), x (exec), s (shared on a TD)."),
          tdx: bool = typer.Option(False, help="A TD (mirror + direct roots) instead of a plain VM."),
          mirror_promotion: str = typer.Option("disallowed", help="disallowed | unpatched | seamcall"),
          nx_huge_pages: bool = typer.Option(False, help="The iTLB-multihit NX workaround."),
          private_max_level: int = typer.Option(2, help="TDX private max level (1=4K upstream, 2=2M HP-v3)."),
          mem_mib: int = typer.Option(64, help="Guest RAM in MiB."),
          start: Optional[str] = typer.Option(None, help="Dump only from this gfn."),
          end: Optional[str] = typer.Option(None, help="Dump only up to this gfn."),
          kernel: Optional[str] = kernel_option(),
          vendor: Optional[str] = vendor_option(),
          root_level: int = root_level_option(),
          ) -> None:
    """Fault the given gfns into a fresh VM, then print every root's page tables and the
    stats — the quickest way to see what the fault path decides."""
    if mirror_promotion not in MIRROR_PROMOTION_CHOICES:
        raise typer.BadParameter(f"--mirror-promotion must be one of {', '.join(MIRROR_PROMOTION_CHOICES)}")
    parsed = [_parse_access(a) for a in accesses]
    policy = Policy(mirror_promotion=mirror_promotion, nx_huge_pages=nx_huge_pages)
    ops = RecordingExternalOps(private_max_level=private_max_level) if tdx else None
    config = VmConfig(tdx=tdx, mem_bytes=mem_mib << 20, root_level=root_level,
                      profile=resolve_kernel(kernel), vendor=resolve_vendor(vendor) or "intel")
    try:
        kvm = create_vm(config, policy, x86_ops=ops)
    except ValueError as e:  # e.g. a TD on a kernel without KVM_X86_TDX_VM, or on amd
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    console = make_console()
    for gfn, flags in parsed:
        private = tdx and "s" not in flags
        gpa = gfn << 12
        if tdx and not private:
            gpa |= kvm.gfn_direct_bits << 12
        err = ept_violation_error_code(write="w" in flags, exec="x" in flags, private=private)
        r = kvm_mmu_do_page_fault(kvm.vcpus[0], gpa, err)
        console.print(f"fault gfn {gfn:#x} ({flags}{', private' if private else ''}) → "
                      f"{RET_PF_NAMES.get(r) or '-' + ERRNO_NAMES.get(-r, str(-r))}")
    lo = int(start, 0) if start else 0
    hi = int(end, 0) if end else None
    for root in kvm.tdp_mmu_roots:
        console.print(dump_table(root_name(root), walk_root(kvm, root, lo, hi)))
    pages = kvm.stat.pages
    console.print(f"pages_4k {pages[0]}  pages_2m {pages[1]}  pages_1g {pages[2]}  "
                  f"tdp_mmu_pages {kvm.tdp_mmu_pages}  nx_lpage_splits {kvm.stat.nx_lpage_splits}  "
                  f"remote_tlb_flush_requests {kvm.stat.remote_tlb_flush_requests}")
    for bug in kvm.bugs:
        console.print(f"[red]KVM_BUG_ON[/red] in {bug.function}: {bug.message}")


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the ``tdpsim`` script."""
    _register_engine_commands()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="tdpsim")


if __name__ == "__main__":  # pragma: no cover
    main()
