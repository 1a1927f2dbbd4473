"""ftrace / trace-cmd parser and formatter for KVM's ``kvm`` and ``kvmmmu`` tracepoints.

Public API::

    from tdpsim.trace import parse_trace, TraceParser, format_line, format_record

    p = TraceParser("trace.txt", skip_bad=True)
    for rec in p:            # streaming, constant memory
        ...
    p.stats                  # TraceStats: lines, events by name, skipped, bad lines

    format_record(rec)       # exact TP_printk text
    format_line(rec)         # a full trace-cmd report line; parse_line(format_line(r)) == r

Formats are taken from the kernel sources (``arch/x86/kvm/mmu/mmutrace.h``,
``arch/x86/kvm/trace.h``) and, for the events that trace-cmd prints through its own
handler, from libtraceevent's ``plugins/plugin_kvm.c``.

Notes on the project digest (``kvm-tdp-mmu.md`` §8.2), checked against the kernel:

* ``kvm_page_fault``: the digest says older kernels print ``"address %lx error_code
  %llx"``; the kernel's pre-2022 format is ``"address %lx error_code %x"`` (error_code was
  ``unsigned int``), and between the vcpu/rip patch and the u64 patch it was ``"vcpu %u
  rip 0x%lx address 0x%lx error_code %x"``.  All three are parsed (``style``).
* ``KVM_MMU_PAGE_PRINTK``'s trailing ``%c`` (NUL) does not reach the trace output: the
  macro prints into the scratch ``trace_seq`` (``p = &iter->tmp_seq``) and the NUL only
  terminates the string that the outer ``"%s"`` copies.
* Not in the digest but important for ``trace-cmd report``: libtraceevent's
  ``plugin_kvm`` replaces the kernel format for ``kvm_entry`` (`` vcpu %u rip 0x%llx``),
  ``kvm_exit`` (``reason %s rip 0x%llx info %llx %llx`` -- no vcpu; reasons the plugin
  does not know, e.g. TDCALL, print ``UNKNOWN (n)``) and the page events
  (``kvm_mmu_get_page``: ``new sp gfn %llx <role>``, the others ``<role>`` only, no gfn,
  no gen, decoded with an obsolete role layout: bit 4 shown as ``pae``, bits 16-23
  -- ``ad_disabled``, ``guest_mode``, ``passthrough``, ``is_mirror`` -- not shown).  Without
  the plugin, libtraceevent cannot evaluate ``KVM_MMU_PAGE_PRINTK`` and prints
  ``[FAILED TO PARSE] mmu_valid_gen=.. gfn=.. role=.. root_count=.. unsync=..`` which is
  the only text form that carries the full role word (and so ``is_mirror``).
* ``kvm_entry`` has printed ``"vcpu %u, rip 0x%lx%s"`` with ``"[immediate exit]"`` (no
  leading space) since v6.9; earlier kernels print ``"vcpu %u, rip 0x%lx"``.
"""

from .formats import format_line, format_page_role, format_pferr_flags, format_record
from .parser import (
    SUPPORTED_EVENTS,
    BadLine,
    TraceParseError,
    TraceParser,
    TraceStats,
    parse_line,
    parse_trace,
)
from .records import (
    EVENT_CLASSES,
    PFERR_FLAGS,
    RECORD_CLASSES,
    ROLE_KERNEL_MASK,
    ROLE_PLUGIN_MASK,
    VMX_EXIT_REASONS,
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
    make_role,
)

__all__ = [
    "format_line", "format_record", "format_page_role", "format_pferr_flags",
    "parse_trace", "parse_line", "TraceParser", "TraceStats", "TraceParseError", "BadLine",
    "SUPPORTED_EVENTS", "EVENT_CLASSES", "RECORD_CLASSES", "PFERR_FLAGS", "VMX_EXIT_REASONS",
    "ROLE_KERNEL_MASK", "ROLE_PLUGIN_MASK", "make_role", "TraceRecord",
    "KvmPageFault", "KvmEntry", "KvmExit", "KvmMmuSpteRequested", "KvmMmuSetSpte",
    "KvmTdpMmuSpteChanged", "KvmMmuSplitHugePage", "KvmMmuPageRecord", "KvmMmuGetPage",
    "KvmMmuPrepareZapPage", "KvmMmuSyncPage", "KvmMmuUnsyncPage", "FastPageFault",
    "MarkMmioSpte", "HandleMmioPageFault", "CheckMmioSpte", "KvmMmuZapAllFast",
]
