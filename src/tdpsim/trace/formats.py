"""Formatter: records -> the exact text the kernel's ``TP_printk`` produces.

``format_record(rec)`` gives the event text (what follows ``<event>: `` on a trace line);
``format_line(rec)`` gives a whole ``trace-cmd report``-style line (or raw ftrace style).
The parser in :mod:`tdpsim.trace.parser` inverts both: ``parse_line(format_line(r)) == r``.

Pointers (``%p``) are printed the way the kernel does on 64-bit: 16 zero-padded hex
digits, no ``0x`` (trace-cmd prints ``0x...``/``(nil)``; the parser accepts both).
``%#llx`` is printed ``0x0`` for zero as the kernel's vsprintf does (glibc prints ``0``;
the parser accepts both).
"""

from __future__ import annotations

from typing import Callable

from .records import (
    PFERR_FLAGS,
    CheckMmioSpte,
    FastPageFault,
    HandleMmioPageFault,
    KvmEntry,
    KvmExit,
    KvmMmuGetPage,
    KvmMmuPageRecord,
    KvmMmuPrepareZapPage,
    KvmMmuSetSpte,
    KvmMmuSplitHugePage,
    KvmMmuSpteRequested,
    KvmMmuSyncPage,
    KvmMmuUnsyncPage,
    KvmMmuZapAllFast,
    KvmPageFault,
    KvmTdpMmuSpteChanged,
    MarkMmioSpte,
    TraceRecord,
)

__all__ = ["format_record", "format_line", "format_pferr_flags", "format_page_role"]

_ACCESS_STR = ("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux")


def format_pferr_flags(value: int) -> str:
    """``__print_flags(value, "|", kvm_mmu_trace_pferr_flags)`` (kernel
    ``trace_print_flags_seq``: names in table order, leftover bits as ``0x%lx``, nothing
    at all for 0)."""
    parts = []
    for mask, name in PFERR_FLAGS:
        if value & mask == mask:
            parts.append(name)
            value &= ~mask
    if value:
        parts.append(f"0x{value:x}")
    return "|".join(parts)


def format_page_role(rec: KvmMmuPageRecord) -> str:
    """The ``KVM_MMU_PAGE_PRINTK()`` text (kernel style) for a page record."""
    role = rec.role
    return (
        f"sp gen {rec.mmu_valid_gen} gfn {rec.gfn:x} l{role & 0xF} "
        f"{4 if role & 0x10 else 8}-byte q{(role >> 5) & 3}"
        f"{' direct' if role & 0x80 else ''} {_ACCESS_STR[(role >> 8) & 7]}"
        f"{' invalid' if role & 0x800 else ''} {'' if role & 0x1000 else '!'}nxe "
        f"{'!' if role & 0x10000 else ''}ad root {rec.root_count} "
        f"{'unsync' if rec.unsync else 'sync'}"
    )


def _plugin_page_role(rec: KvmMmuPageRecord) -> str:
    # libtraceevent plugin_kvm.c kvm_mmu_print_role (old role layout, see records.py)
    role = rec.role
    return (
        f"{role & 0xF} q{(role >> 5) & 3}{' direct' if role & 0x80 else ''} "
        f"{_ACCESS_STR[(role >> 8) & 7]}{' invalid' if role & 0x800 else ''} "
        f"{'' if role & 0x10 else '!'}pae {'' if role & 0x1000 else '!'}nxe "
        f"{'' if role & 0x2000 else '!'}wp{' smep' if role & 0x4000 else ''}"
        f"{' smap' if role & 0x8000 else ''}{' smm' if role >> 24 else ''}"
        f" root {rec.root_count} {'unsync' if rec.unsync else 'sync'}"
    )


def _fmt_page(rec: KvmMmuPageRecord) -> str:
    style = rec.style
    created = getattr(rec, "created", None)
    if style == "kernel":
        text = format_page_role(rec)
        if created is not None:
            text += " new" if created else " existing"
        return text
    if style == "plugin":
        text = _plugin_page_role(rec)
        if created is not None:
            text = f"{'new' if created else 'existing'} sp gfn {rec.gfn:x} " + text
        return text
    if style == "raw":
        text = (
            f"[FAILED TO PARSE] mmu_valid_gen={rec.mmu_valid_gen} gfn={rec.gfn} "
            f"role={rec.role} root_count={rec.root_count} unsync={int(rec.unsync)}"
        )
        if created is not None:
            text += f" created={int(created)}"
        return text
    raise ValueError(f"unknown style {style!r} for {rec.EVENT}")


def _fmt_page_fault(r: KvmPageFault) -> str:
    if r.style == "kernel":
        return (
            f"vcpu {r.vcpu_id} rip 0x{r.guest_rip:x} address 0x{r.fault_address:016x} "
            f"error_code 0x{r.error_code:x}"
        )
    if r.style == "v2":
        return (
            f"vcpu {r.vcpu_id} rip 0x{r.guest_rip:x} address 0x{r.fault_address:x} "
            f"error_code {r.error_code:x}"
        )
    if r.style == "v1":
        return f"address {r.fault_address:x} error_code {r.error_code:x}"
    raise ValueError(f"unknown style {r.style!r} for kvm_page_fault")


def _sym(s: str | None) -> str:
    return "" if s is None else " " + s


def _fmt_entry(r: KvmEntry) -> str:
    if r.style == "kernel":
        return f"vcpu {r.vcpu_id}, rip 0x{r.rip:x}{'[immediate exit]' if r.immediate_exit else ''}"
    if r.style == "plugin":
        return f" vcpu {r.vcpu_id} rip 0x{r.rip:x}{_sym(r.rip_sym)}"
    raise ValueError(f"unknown style {r.style!r} for kvm_entry")


def _fmt_exit(r: KvmExit) -> str:
    if r.style == "kernel":
        return (
            f"vcpu {r.vcpu_id} reason {r.exit_reason} rip 0x{r.guest_rip:x} "
            f"info1 0x{r.info1:016x} info2 0x{r.info2:016x} "
            f"intr_info 0x{r.intr_info:08x} error_code 0x{r.error_code:08x}"
        )
    if r.style == "plugin":
        return (
            f"reason {r.exit_reason} rip 0x{r.guest_rip:x}{_sym(r.rip_sym)} "
            f"info {r.info1:x} {r.info2:x}"
        )
    raise ValueError(f"unknown style {r.style!r} for kvm_exit")


def _fmt_set_spte(r: KvmMmuSetSpte) -> str:
    u = "" if r.u == -1 else ("u" if r.u else "-")
    return (
        f"gfn {r.gfn:x} spte {r.spte:x} ({'r' if r.r else '-'}{'w' if r.w else '-'}"
        f"{'x' if r.x else '-'}{u}) level {r.level} at {r.sptep:x}"
    )


_FORMATTERS: dict[type, Callable[..., str]] = {
    KvmPageFault: _fmt_page_fault,
    KvmEntry: _fmt_entry,
    KvmExit: _fmt_exit,
    KvmMmuSpteRequested: lambda r: f"gfn {r.gfn:x} pfn {r.pfn:x} level {r.level}",
    KvmMmuSetSpte: _fmt_set_spte,
    KvmTdpMmuSpteChanged: lambda r: (
        f"as id {r.as_id} gfn {r.gfn:x} level {r.level} "
        f"old_spte {r.old_spte:x} new_spte {r.new_spte:x}"
    ),
    KvmMmuSplitHugePage: lambda r: f"gfn {r.gfn:x} spte {r.spte:x} level {r.level} errno {r.errno}",
    KvmMmuGetPage: _fmt_page,
    KvmMmuPrepareZapPage: _fmt_page,
    KvmMmuSyncPage: _fmt_page,
    KvmMmuUnsyncPage: _fmt_page,
    FastPageFault: lambda r: (
        f"vcpu {r.vcpu_id} gva {r.cr2_or_gpa:x} error_code {format_pferr_flags(r.error_code)} "
        f"sptep {r.sptep:016x} old 0x{r.old_spte:x} new {r.new_spte:x} "
        f"spurious {int(r.spurious)} fixed {int(r.fixed)}"
    ),
    MarkMmioSpte: lambda r: f"sptep:{r.sptep:016x} gfn {r.gfn:x} access {r.access:x} gen {r.gen:x}",
    HandleMmioPageFault: lambda r: f"addr:{r.addr:x} gfn {r.gfn:x} access {r.access:x}",
    CheckMmioSpte: lambda r: (
        f"spte {r.spte:x} kvm_gen {r.kvm_gen:x} spte-gen {r.spte_gen:x} "
        f"valid {int(r.kvm_gen == r.spte_gen)}"
    ),
    KvmMmuZapAllFast: lambda r: f"kvm-mmu-valid-gen {r.mmu_valid_gen} used_pages {r.mmu_used_pages:x}",
}


def format_record(rec: TraceRecord) -> str:
    """The event's text exactly as the kernel's ``TP_printk`` prints it (or as the
    record's ``style`` says, for records parsed from trace-cmd plugin output)."""
    try:
        fmt = _FORMATTERS[type(rec)]
    except KeyError:
        raise TypeError(f"not a trace record: {type(rec).__name__}") from None
    return fmt(rec)


def format_line(rec: TraceRecord, *, style: str = "trace-cmd") -> str:
    """A whole trace line (no trailing newline).

    ``style="trace-cmd"``: ``trace-cmd report`` layout
    ``<comm:>16>-<pid:<5> [<cpu:03>] [<flags> ]<timestamp>: <event>: <text>``.
    ``style="ftrace"``: ``/sys/kernel/tracing/trace`` layout
    ``<comm:>16>-<pid:<7> [(<tgid>) ][<cpu:03>] [<flags> ]<timestamp:>12>: <event>: <text>``.
    ``tgid`` (``record-tgid`` column) is written when not None in both layouts.
    """
    text = format_record(rec)
    flags = "" if rec.flags is None else rec.flags + " "
    tg = ""
    if rec.tgid is not None:
        tg = "(-------) " if rec.tgid < 0 else f"({rec.tgid:>7}) "
    if style == "trace-cmd":
        head = f"{rec.comm:>16}-{rec.pid:<5} {tg}[{rec.cpu:03d}] {flags}{rec.timestamp}"
    elif style == "ftrace":
        head = f"{rec.comm:>16}-{rec.pid:<7} {tg}[{rec.cpu:03d}] {flags}{rec.timestamp:>12}"
    else:
        raise ValueError(f"unknown line style {style!r}")
    return f"{head}: {rec.EVENT}: {text}"
