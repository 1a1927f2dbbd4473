"""Typed records, one frozen slotted dataclass per supported tracepoint.

Field names follow the kernel's ``TP_STRUCT__entry`` fields.  Where the printed text does
not carry a struct field exactly (e.g. ``fast_page_fault.ret`` is printed only as the two
booleans ``spurious``/``fixed``), the record carries what is printed.

Every record also carries the ftrace header: ``comm`` (task name), ``pid``, ``cpu``,
``timestamp`` (the exact text, e.g. ``"1234.567890"``; see :attr:`TraceRecord.timestamp_ns`),
``lineno`` (source line, excluded from equality), ``tgid`` (``record-tgid`` column; ``-1``
for ``(-------)``) and ``flags`` (the irq-flags/latency column such as ``d..1.``).

Records whose text exists in several spellings (kernel versions, or trace-cmd's
libtraceevent ``plugin_kvm`` which replaces the kernel's TP_printk for some events) carry a
keyword-only ``style`` field so that :func:`tdpsim.trace.format_record` reproduces the
spelling that was parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "TraceRecord",
    "KvmPageFault",
    "KvmEntry",
    "KvmExit",
    "KvmMmuSpteRequested",
    "KvmMmuSetSpte",
    "KvmTdpMmuSpteChanged",
    "KvmMmuSplitHugePage",
    "KvmMmuPageRecord",
    "KvmMmuGetPage",
    "KvmMmuPrepareZapPage",
    "KvmMmuSyncPage",
    "KvmMmuUnsyncPage",
    "FastPageFault",
    "MarkMmioSpte",
    "HandleMmioPageFault",
    "CheckMmioSpte",
    "KvmMmuZapAllFast",
    "RECORD_CLASSES",
    "EVENT_CLASSES",
    "ROLE_KERNEL_MASK",
    "ROLE_PLUGIN_MASK",
    "make_role",
    "PFERR_FLAGS",
    "VMX_EXIT_REASONS",
]

# ---------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------

#: ``kvm_mmu_trace_pferr_flags`` in mmutrace.h, in table order (used by ``__print_flags``).
PFERR_FLAGS: tuple[tuple[int, str], ...] = (
    (1 << 0, "P"),
    (1 << 1, "W"),
    (1 << 2, "U"),
    (1 << 3, "RSVD"),
    (1 << 4, "F"),
)

#: VMX basic exit reasons (``arch/x86/include/uapi/asm/vmx.h`` ``VMX_EXIT_REASONS``), used
#: only to map a printed name back to its number (:attr:`KvmExit.exit_reason_code`).
VMX_EXIT_REASONS: dict[str, int] = {
    "EXCEPTION_NMI": 0, "EXTERNAL_INTERRUPT": 1, "TRIPLE_FAULT": 2, "INIT_SIGNAL": 3,
    "SIPI_SIGNAL": 4, "INTERRUPT_WINDOW": 7, "NMI_WINDOW": 8, "TASK_SWITCH": 9, "CPUID": 10,
    "HLT": 12, "INVD": 13, "INVLPG": 14, "RDPMC": 15, "RDTSC": 16, "VMCALL": 18,
    "VMCLEAR": 19, "VMLAUNCH": 20, "VMPTRLD": 21, "VMPTRST": 22, "VMREAD": 23,
    "VMRESUME": 24, "VMWRITE": 25, "VMOFF": 26, "VMON": 27, "CR_ACCESS": 28,
    "DR_ACCESS": 29, "IO_INSTRUCTION": 30, "MSR_READ": 31, "MSR_WRITE": 32,
    "INVALID_STATE": 33, "MSR_LOAD_FAIL": 34, "MWAIT_INSTRUCTION": 36,
    "MONITOR_TRAP_FLAG": 37, "MONITOR_INSTRUCTION": 39, "PAUSE_INSTRUCTION": 40,
    "MCE_DURING_VMENTRY": 41, "TPR_BELOW_THRESHOLD": 43, "APIC_ACCESS": 44,
    "EOI_INDUCED": 45, "GDTR_IDTR": 46, "LDTR_TR": 47, "EPT_VIOLATION": 48,
    "EPT_MISCONFIG": 49, "INVEPT": 50, "RDTSCP": 51, "PREEMPTION_TIMER": 52,
    "INVVPID": 53, "WBINVD": 54, "XSETBV": 55, "APIC_WRITE": 56, "RDRAND": 57,
    "INVPCID": 58, "VMFUNC": 59, "ENCLS": 60, "RDSEED": 61, "PML_FULL": 62, "XSAVES": 63,
    "XRSTORS": 64, "UMWAIT": 67, "TPAUSE": 68, "BUS_LOCK": 74, "NOTIFY": 75, "TDCALL": 77,
}

# union kvm_mmu_page_role (arch/x86/include/asm/kvm_host.h):
#   level:4 has_4_byte_gpte:1 quadrant:2 direct:1 access:3 invalid:1 efer_nx:1 cr0_wp:1
#   smep_andnot_wp:1 smap_andnot_wp:1 ad_disabled:1 guest_mode:1 passthrough:1 is_mirror:1
#   :4 smm:8
_ROLE_BITS = {
    "level": (0, 4), "has_4_byte_gpte": (4, 1), "quadrant": (5, 2), "direct": (7, 1),
    "access": (8, 3), "invalid": (11, 1), "efer_nx": (12, 1), "cr0_wp": (13, 1),
    "smep_andnot_wp": (14, 1), "smap_andnot_wp": (15, 1), "ad_disabled": (16, 1),
    "guest_mode": (17, 1), "passthrough": (18, 1), "is_mirror": (19, 1), "smm": (24, 8),
}

#: Role bits that the kernel's ``KVM_MMU_PAGE_PRINTK`` prints (bits 0-12 and ad_disabled).
ROLE_KERNEL_MASK = 0x0001_1FFF
#: Role bits that libtraceevent's ``plugin_kvm`` prints: bits 0-15 (its old layout calls
#: bit 4 ``cr4_pae``, bit 12 ``nxe``), and whether ``smm`` (bits 24-31) is non-zero, which
#: a parsed record represents as bit 24.
ROLE_PLUGIN_MASK = 0x0100_FFFF


def make_role(
    *,
    level: int = 0,
    has_4_byte_gpte: bool = False,
    quadrant: int = 0,
    direct: bool = False,
    access: int = 0,
    invalid: bool = False,
    efer_nx: bool = False,
    cr0_wp: bool = False,
    smep_andnot_wp: bool = False,
    smap_andnot_wp: bool = False,
    ad_disabled: bool = False,
    guest_mode: bool = False,
    passthrough: bool = False,
    is_mirror: bool = False,
    smm: int = 0,
) -> int:
    """Build a ``kvm_mmu_page_role.word`` from its bitfields."""
    vals = dict(
        level=level, has_4_byte_gpte=has_4_byte_gpte, quadrant=quadrant, direct=direct,
        access=access, invalid=invalid, efer_nx=efer_nx, cr0_wp=cr0_wp,
        smep_andnot_wp=smep_andnot_wp, smap_andnot_wp=smap_andnot_wp,
        ad_disabled=ad_disabled, guest_mode=guest_mode, passthrough=passthrough,
        is_mirror=is_mirror, smm=smm,
    )
    word = 0
    for name, (shift, width) in _ROLE_BITS.items():
        v = int(vals[name])
        if not 0 <= v < (1 << width):
            raise ValueError(f"role.{name}={v} does not fit in {width} bit(s)")
        word |= v << shift
    return word


def _role_prop(name: str) -> property:
    shift, width = _ROLE_BITS[name]
    mask = (1 << width) - 1
    if width == 1:
        def get(self) -> bool:  # type: ignore[no-untyped-def]
            return bool((self.role >> shift) & 1)
    else:
        def get(self) -> int:  # type: ignore[no-untyped-def]
            return (self.role >> shift) & mask
    get.__name__ = name
    get.__doc__ = f"``role.{name}`` (bit {shift}" + (f"-{shift + width - 1})" if width > 1 else ")")
    return property(get)


# ---------------------------------------------------------------------------------------
# Base
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRecord:
    """Common ftrace header of every record (all keyword-only)."""

    EVENT: ClassVar[str] = ""
    SYSTEM: ClassVar[str] = ""

    comm: str
    pid: int
    cpu: int
    timestamp: str
    lineno: int = field(default=0, compare=False)
    tgid: int | None = None
    flags: str | None = None

    @property
    def event(self) -> str:
        return self.EVENT

    @property
    def timestamp_ns(self) -> int:
        """Timestamp as integer nanoseconds (exact; no float).  A timestamp without a
        fractional part (counter clocks) is returned unchanged."""
        return timestamp_to_ns(self.timestamp)


def timestamp_to_ns(timestamp: str) -> int:
    """:attr:`TraceRecord.timestamp_ns` of a timestamp text."""
    sec, dot, frac = timestamp.partition(".")
    if not dot:
        return int(sec)
    frac = (frac + "000000000")[:9]
    return int(sec) * 1_000_000_000 + int(frac)


# ---------------------------------------------------------------------------------------
# kvm system (arch/x86/kvm/trace.h)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KvmPageFault(TraceRecord):
    """``kvm:kvm_page_fault``.

    style ``"kernel"``: ``vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx`` (current);
    ``"v2"``: ``vcpu %u rip 0x%lx address 0x%lx error_code %x`` (2022-2023);
    ``"v1"``: ``address %lx error_code %x`` (older; ``vcpu_id``/``guest_rip`` are None).
    """

    EVENT: ClassVar[str] = "kvm_page_fault"
    SYSTEM: ClassVar[str] = "kvm"

    vcpu_id: int | None
    guest_rip: int | None
    fault_address: int
    error_code: int
    style: str = field(default="kernel", kw_only=True)


@dataclass(frozen=True, slots=True)
class KvmEntry(TraceRecord):
    """``kvm:kvm_entry``: kernel ``vcpu %u, rip 0x%lx%s`` (``%s`` = ``[immediate exit]``
    since v6.9, empty before); style ``"plugin"`` = trace-cmd's plugin_kvm
    `` vcpu %u rip 0x%llx[ sym[+0x..]]``."""

    EVENT: ClassVar[str] = "kvm_entry"
    SYSTEM: ClassVar[str] = "kvm"

    vcpu_id: int
    rip: int
    immediate_exit: bool = field(default=False, kw_only=True)
    rip_sym: str | None = field(default=None, kw_only=True)
    style: str = field(default="kernel", kw_only=True)


@dataclass(frozen=True, slots=True)
class KvmExit(TraceRecord):
    """``kvm:kvm_exit``.

    style ``"kernel"``: ``vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx
    intr_info 0x%08x error_code 0x%08x``; ``exit_reason`` is the printed reason text
    (symbol, plus a space and the ``__print_flags`` text when flag bits are set, or
    ``0x..`` for an unknown reason).
    style ``"plugin"`` (trace-cmd plugin_kvm, also the pre-5.x kernel format):
    ``reason %s rip 0x%llx[ sym] info %llx %llx``; ``vcpu_id``, ``intr_info``,
    ``error_code`` are None; an unknown reason prints as ``UNKNOWN (n)``.
    """

    EVENT: ClassVar[str] = "kvm_exit"
    SYSTEM: ClassVar[str] = "kvm"

    vcpu_id: int | None
    exit_reason: str
    guest_rip: int
    info1: int
    info2: int
    intr_info: int | None
    error_code: int | None
    rip_sym: str | None = field(default=None, kw_only=True)
    style: str = field(default="kernel", kw_only=True)

    @property
    def exit_reason_code(self) -> int | None:
        """Basic exit reason number when it can be recovered from the text (VMX names,
        ``0x..`` fallbacks and plugin ``UNKNOWN (n)``), else None."""
        text = self.exit_reason
        if text.startswith("UNKNOWN (") and text.endswith(")"):
            return int(text[9:-1]) & 0xFFFF
        head = text.split(" ", 1)[0]
        if head.startswith("0x"):
            return int(head, 16)
        return VMX_EXIT_REASONS.get(head)


# ---------------------------------------------------------------------------------------
# kvmmmu system (arch/x86/kvm/mmu/mmutrace.h)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KvmMmuSpteRequested(TraceRecord):
    """``kvmmmu:kvm_mmu_spte_requested``: ``gfn %llx pfn %llx level %d``."""

    EVENT: ClassVar[str] = "kvm_mmu_spte_requested"
    SYSTEM: ClassVar[str] = "kvmmmu"

    gfn: int
    pfn: int
    level: int


@dataclass(frozen=True, slots=True)
class KvmMmuSetSpte(TraceRecord):
    """``kvmmmu:kvm_mmu_set_spte``: ``gfn %llx spte %llx (%s%s%s%s) level %d at %llx``.

    ``r``/``x`` are the struct's bools; ``w`` is printed from ``spte & PT_WRITABLE_MASK``
    (bit 1) and must agree with it; ``u`` is the struct's signed char: -1 (printed as
    nothing), 0 (``-``) or 1 (``u``).  ``sptep`` is the physical address of the SPTE.
    """

    EVENT: ClassVar[str] = "kvm_mmu_set_spte"
    SYSTEM: ClassVar[str] = "kvmmmu"

    gfn: int
    spte: int
    level: int
    sptep: int
    r: bool
    w: bool
    x: bool
    u: int


@dataclass(frozen=True, slots=True)
class KvmTdpMmuSpteChanged(TraceRecord):
    """``kvmmmu:kvm_tdp_mmu_spte_changed``:
    ``as id %d gfn %llx level %d old_spte %llx new_spte %llx``."""

    EVENT: ClassVar[str] = "kvm_tdp_mmu_spte_changed"
    SYSTEM: ClassVar[str] = "kvmmmu"

    as_id: int
    gfn: int
    level: int
    old_spte: int
    new_spte: int


@dataclass(frozen=True, slots=True)
class KvmMmuSplitHugePage(TraceRecord):
    """``kvmmmu:kvm_mmu_split_huge_page``: ``gfn %llx spte %llx level %d errno %d``."""

    EVENT: ClassVar[str] = "kvm_mmu_split_huge_page"
    SYSTEM: ClassVar[str] = "kvmmmu"

    gfn: int
    spte: int
    level: int
    errno: int


@dataclass(frozen=True, slots=True)
class KvmMmuPageRecord(TraceRecord):
    """Events printed with ``KVM_MMU_PAGE_PRINTK``.

    Fields are the TP_STRUCT fields ``mmu_valid_gen``, ``gfn``, ``role`` (the
    ``kvm_mmu_page_role`` word), ``root_count``, ``unsync``.  The text only shows some role
    bits; ``role`` holds exactly those bits (others zero), see :attr:`known_role_mask`.
    Decoded role bits are available as properties (``level``, ``quadrant``,
    ``is_mirror`` ...).

    style ``"kernel"``: ``sp gen %u gfn %llx l%u %u-byte q%u%s %s%s %snxe %sad root %u %s``;
    style ``"plugin"``: trace-cmd plugin_kvm (``mmu_valid_gen`` is None and, except for
    ``kvm_mmu_get_page``, so is ``gfn``); style ``"raw"``: libtraceevent's
    ``[FAILED TO PARSE] name=value ...`` fallback, which has the full role word.
    """

    mmu_valid_gen: int | None
    gfn: int | None
    role: int
    root_count: int
    unsync: bool
    style: str = field(default="kernel", kw_only=True)

    @property
    def gen(self) -> int | None:
        return self.mmu_valid_gen

    @property
    def known_role_mask(self) -> int:
        return {"kernel": ROLE_KERNEL_MASK, "plugin": ROLE_PLUGIN_MASK}.get(self.style, 0xFFFFFFFF)

    @property
    def gpte_bytes(self) -> int:
        """4 or 8, as printed by ``%u-byte``."""
        return 4 if self.has_4_byte_gpte else 8

    @property
    def access_str(self) -> str:
        return ("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux")[self.access]

    @property
    def nxe(self) -> bool:
        return self.efer_nx

    @property
    def ad(self) -> bool:
        """True when A/D bits are enabled (printed ``ad``, not ``!ad``)."""
        return not self.ad_disabled

    level = _role_prop("level")
    has_4_byte_gpte = _role_prop("has_4_byte_gpte")
    quadrant = _role_prop("quadrant")
    direct = _role_prop("direct")
    access = _role_prop("access")
    invalid = _role_prop("invalid")
    efer_nx = _role_prop("efer_nx")
    cr0_wp = _role_prop("cr0_wp")
    smep_andnot_wp = _role_prop("smep_andnot_wp")
    smap_andnot_wp = _role_prop("smap_andnot_wp")
    ad_disabled = _role_prop("ad_disabled")
    guest_mode = _role_prop("guest_mode")
    passthrough = _role_prop("passthrough")
    is_mirror = _role_prop("is_mirror")
    smm = _role_prop("smm")


@dataclass(frozen=True, slots=True)
class KvmMmuGetPage(KvmMmuPageRecord):
    """``kvmmmu:kvm_mmu_get_page``: page-printk + `` new``/`` existing``."""

    EVENT: ClassVar[str] = "kvm_mmu_get_page"
    SYSTEM: ClassVar[str] = "kvmmmu"

    created: bool = field(default=True, kw_only=True)


@dataclass(frozen=True, slots=True)
class KvmMmuPrepareZapPage(KvmMmuPageRecord):
    """``kvmmmu:kvm_mmu_prepare_zap_page``: page-printk."""

    EVENT: ClassVar[str] = "kvm_mmu_prepare_zap_page"
    SYSTEM: ClassVar[str] = "kvmmmu"


@dataclass(frozen=True, slots=True)
class KvmMmuSyncPage(KvmMmuPageRecord):
    """``kvmmmu:kvm_mmu_sync_page``: page-printk (shadow MMU only)."""

    EVENT: ClassVar[str] = "kvm_mmu_sync_page"
    SYSTEM: ClassVar[str] = "kvmmmu"


@dataclass(frozen=True, slots=True)
class KvmMmuUnsyncPage(KvmMmuPageRecord):
    """``kvmmmu:kvm_mmu_unsync_page``: page-printk (shadow MMU only)."""

    EVENT: ClassVar[str] = "kvm_mmu_unsync_page"
    SYSTEM: ClassVar[str] = "kvmmmu"


@dataclass(frozen=True, slots=True)
class FastPageFault(TraceRecord):
    """``kvmmmu:fast_page_fault``: ``vcpu %d gva %llx error_code %s sptep %p old %#llx
    new %llx spurious %d fixed %d``.  ``error_code`` is the struct field (u32 up to 2024,
    u64 since; printed with ``__print_flags`` over P/W/U/RSVD/F, the rest as one hex
    leftover); ``ret`` is only visible as ``spurious``/``fixed``.  ``sptep`` is a ``%p``:
    hashed unless the host boots with ``no_hash_pointers``.
    """

    EVENT: ClassVar[str] = "fast_page_fault"
    SYSTEM: ClassVar[str] = "kvmmmu"

    vcpu_id: int
    cr2_or_gpa: int
    error_code: int
    sptep: int
    old_spte: int
    new_spte: int
    spurious: bool
    fixed: bool


@dataclass(frozen=True, slots=True)
class MarkMmioSpte(TraceRecord):
    """``kvmmmu:mark_mmio_spte``: ``sptep:%p gfn %llx access %x gen %x``."""

    EVENT: ClassVar[str] = "mark_mmio_spte"
    SYSTEM: ClassVar[str] = "kvmmmu"

    sptep: int
    gfn: int
    access: int
    gen: int


@dataclass(frozen=True, slots=True)
class HandleMmioPageFault(TraceRecord):
    """``kvmmmu:handle_mmio_page_fault``: ``addr:%llx gfn %llx access %x``."""

    EVENT: ClassVar[str] = "handle_mmio_page_fault"
    SYSTEM: ClassVar[str] = "kvmmmu"

    addr: int
    gfn: int
    access: int


@dataclass(frozen=True, slots=True)
class CheckMmioSpte(TraceRecord):
    """``kvmmmu:check_mmio_spte``: ``spte %llx kvm_gen %x spte-gen %x valid %d``
    (``valid`` is derived: ``kvm_gen == spte_gen``)."""

    EVENT: ClassVar[str] = "check_mmio_spte"
    SYSTEM: ClassVar[str] = "kvmmmu"

    spte: int
    kvm_gen: int
    spte_gen: int

    @property
    def valid(self) -> bool:
        return self.kvm_gen == self.spte_gen


@dataclass(frozen=True, slots=True)
class KvmMmuZapAllFast(TraceRecord):
    """``kvmmmu:kvm_mmu_zap_all_fast``: ``kvm-mmu-valid-gen %u used_pages %x``."""

    EVENT: ClassVar[str] = "kvm_mmu_zap_all_fast"
    SYSTEM: ClassVar[str] = "kvmmmu"

    mmu_valid_gen: int
    mmu_used_pages: int


RECORD_CLASSES: tuple[type[TraceRecord], ...] = (
    KvmPageFault,
    KvmEntry,
    KvmExit,
    KvmMmuSpteRequested,
    KvmMmuSetSpte,
    KvmTdpMmuSpteChanged,
    KvmMmuSplitHugePage,
    KvmMmuGetPage,
    KvmMmuPrepareZapPage,
    KvmMmuSyncPage,
    KvmMmuUnsyncPage,
    FastPageFault,
    MarkMmioSpte,
    HandleMmioPageFault,
    CheckMmioSpte,
    KvmMmuZapAllFast,
)

#: event name -> record class
EVENT_CLASSES: dict[str, type[TraceRecord]] = {c.EVENT: c for c in RECORD_CLASSES}
