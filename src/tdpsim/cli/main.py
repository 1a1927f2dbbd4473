"""``tdpsim`` — the typer application.  Engines' commands register themselves from their
own modules (``register(app)``) so this file stays a thin table of contents.

Start-up matters (``tdpsim --help`` is run often, goal <= 0.5 s): the command modules
import only typer and the standard library at the top; the model, the engines, reports,
matplotlib, polars and numpy are imported inside the commands that use them.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import asdict
from typing import List, Optional

import typer

from .. import __version__
from .common import JSON_HELP, fail, out_console, print_json
from .kernel_opts import (kernel_option, resolve_kernel, resolve_vendor, root_level_option,
                          vendor_option)

# Plain (click) help: it wraps long option names instead of cutting them at 80 columns,
# and reads like a man page.  Internal errors keep plain tracebacks (there should be none:
# bad input is reported as one line, see common.py).
app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Executable model of KVM's TDP MMU, TDX mirror roots and the TDX "
                       "module's Secure-EPT.")

# Engine commands living in their own modules; each exposes register(app).
COMMAND_MODULES = ("sim", "explore", "replay_trace", "kvm_check", "equiv")
_registered = False


def _register_engine_commands() -> None:
    global _registered
    if _registered:  # tests and main() may both ask
        return
    _registered = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tdpsim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version,
                                       is_eager=True, help="Print the version and exit."),
          ) -> None:
    """Executable model of KVM's TDP MMU, TDX mirror roots and the TDX module's
    Secure-EPT.  `tdpsim COMMAND --help` describes each command."""
    from .. import accel
    try:
        accel.check_requested()
    except accel.AccelError as e:
        fail(str(e))


@app.command()
def seed(dump: bool = typer.Option(False, "--dump", help="Also print each root's SPTEs "
                                   "around the converted page."),
         kernel: Optional[str] = kernel_option(),
         json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """The seed review's scenario under each variant, side by side.

    Runs the seed patch review's scenario on a direct root and on a TD's mirror root with
    the patch, without it, and with a promoting KVM.  Kernels without TDX run the
    direct-root variant only."""
    from ..scenarios.seed import run_seed
    from .render import dump_table, seed_table

    profile = resolve_kernel(kernel)
    outcomes = run_seed(profile)
    if json_out:
        print_json([{k: v for k, v in asdict(o).items() if dump or k != "dump"}
                    for o in outcomes])
        return
    console = out_console()
    if kernel is not None:
        console.print(f"kernel {profile.name}"
                      + ("" if profile.tdx_vm_type else ": no TDX, direct root only"), markup=False)
    console.print(seed_table(outcomes, console.width))
    for o in outcomes:
        console.print(f"[bold]{o.variant}[/bold]: " + "; ".join(f"{a} → {b}" for a, b in o.steps))
    if dump:
        for o in outcomes:
            console.print(dump_table(f"{o.variant}: {o.root} root around the converted page",
                                     o.dump, console.width))


def _parse_access(spec: str) -> tuple[int, str]:
    """``GFN[:FLAGS]`` with flags from w (write), x (exec), s (shared), r (read only)."""
    gfn_text, _, flags = spec.partition(":")
    try:
        gfn = int(gfn_text, 0)
    except ValueError:
        raise typer.BadParameter(f"{spec!r}: the gfn must be a number like 0x400") from None
    if gfn < 0:
        raise typer.BadParameter(f"{spec!r}: the gfn must not be negative")
    bad = set(flags) - set("wxsr")
    if bad:
        raise typer.BadParameter(f"{spec!r}: unknown flag(s) {''.join(sorted(bad))}; use w, x, s, r")
    return gfn, flags or "w"


def _gfn_option(text: Optional[str], option: str) -> Optional[int]:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected a gfn like 0x400",
                                 param_hint=option) from None


@app.command()
def fault(accesses: List[str] = typer.Argument(..., metavar="GFN[:FLAGS]...", help="GFN[:FLAGS] per fault; flags w "
                                                "(write, default), r (read), x (exec), s (shared on a TD)."),
          tdx: bool = typer.Option(False, help="A TD (mirror + direct roots) instead of a plain VM."),
          mirror_promotion: str = typer.Option("disallowed", help="disallowed | unpatched | seamcall"),
          nx_huge_pages: bool = typer.Option(False, help="The iTLB-multihit NX workaround."),
          private_max_level: int = typer.Option(2, min=1, max=3,
                                                help="TDX private max level (1=4K upstream, 2=2M HP-v3)."),
          mem_mib: int = typer.Option(64, min=4, max=1 << 22, help="Guest RAM in MiB."),
          start: Optional[str] = typer.Option(None, help="Dump only from this gfn."),
          end: Optional[str] = typer.Option(None, help="Dump only up to this gfn."),
          kernel: Optional[str] = kernel_option(),
          vendor: Optional[str] = vendor_option(),
          root_level: int = root_level_option(),
          json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
          ) -> None:
    """Fault gfns into a fresh VM; print its page tables and stats.

    The quickest way to see what the fault path decides."""
    from ..model.dump import root_name, walk_root
    from ..model.kvm import RecordingExternalOps
    from ..model.mmu_fault import ept_violation_error_code, kvm_mmu_page_fault
    from ..model.mmu_internal import ERRNO_NAMES, RET_PF_NAMES
    from ..model.policy import MIRROR_PROMOTION_CHOICES, Policy
    from ..model.vmm import VmConfig, create_vm
    from .render import dump_table

    if mirror_promotion not in MIRROR_PROMOTION_CHOICES:
        raise typer.BadParameter(f"must be one of {', '.join(MIRROR_PROMOTION_CHOICES)}",
                                 param_hint="--mirror-promotion")
    parsed = [_parse_access(a) for a in accesses]
    lo = _gfn_option(start, "--start") or 0
    hi = _gfn_option(end, "--end")
    policy = Policy(mirror_promotion=mirror_promotion, nx_huge_pages=nx_huge_pages)
    ops = RecordingExternalOps(private_max_level=private_max_level) if tdx else None
    config = VmConfig(tdx=tdx, mem_bytes=mem_mib << 20, root_level=root_level,
                      profile=resolve_kernel(kernel), vendor=resolve_vendor(vendor) or "intel")
    try:
        kvm = create_vm(config, policy, x86_ops=ops)
    except ValueError as e:  # e.g. a TD on a kernel without KVM_X86_TDX_VM, or on amd
        fail(str(e))
    faults = []
    for gfn, flags in parsed:
        private = tdx and "s" not in flags
        gpa = gfn << 12
        if tdx and not private:
            gpa |= kvm.gfn_direct_bits << 12
        err = ept_violation_error_code(write="w" in flags, exec="x" in flags, private=private)
        r = kvm_mmu_page_fault(kvm.vcpus[0], gpa, err)
        faults.append({"gfn": gfn, "flags": flags, "private": private,
                       "result": RET_PF_NAMES.get(r) or "-" + ERRNO_NAMES.get(-r, str(-r))})
    roots = [(root_name(root), list(walk_root(kvm, root, lo, hi))) for root in kvm.tdp_mmu_roots]
    pages = kvm.stat.pages
    stats = {"pages_4k": pages[0], "pages_2m": pages[1], "pages_1g": pages[2],
             "tdp_mmu_pages": kvm.tdp_mmu_pages, "nx_lpage_splits": kvm.stat.nx_lpage_splits,
             "remote_tlb_flush_requests": kvm.stat.remote_tlb_flush_requests}
    bugs = [{"function": b.function, "message": b.message} for b in kvm.bugs]
    if json_out:
        print_json({"faults": faults, "roots": [{"name": n, "sptes": [asdict(r) for r in rows]}
                                                for n, rows in roots],
                    "stats": stats, "bugs": bugs})
        return
    console = out_console()
    for f in faults:
        console.print(f"fault gfn {f['gfn']:#x} ({f['flags']}"
                      f"{', private' if f['private'] else ''}) → {f['result']}")
    for name, rows in roots:
        console.print(dump_table(name, rows, console.width))
    console.print("  ".join(f"{k} {v}" for k, v in stats.items()))
    for b in bugs:
        console.print(f"[red]KVM_BUG_ON[/red] in {b['function']}: {b['message']}")


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of the ``tdpsim`` script and of ``python -m tdpsim``.  Ctrl-C exits
    130 (typer's handling); commands holding finished work save it before that."""
    _register_engine_commands()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="tdpsim")


if __name__ == "__main__":  # pragma: no cover
    main()
