"""Event records, named after the kernel tracepoints they mirror.

The model emits these through ``Kvm.tracer`` (a callable, None when nobody listens — like a
disabled static key, so untraced runs pay one test; the fault path's per-fault events are
also skipped when the tracer says it does not read them, see ``traces``).  Metrics, cost,
trace output and reports observe the stream; the model never imports them.

Tracepoints mirrored (``arch/x86/kvm/mmu/mmutrace.h``, ``arch/x86/kvm/trace.h``): field names
are the ``TP_STRUCT__entry`` names.  ``KvmBug``, ``KvmWarn`` and ``KvmFlushRemoteTlbs`` are
not tracepoints: they record ``KVM_BUG_ON``/``WARN_ON_ONCE`` firing and TLB flush calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spte import PT_PRESENT_MASK, SpteMasks, is_executable_pte


def traces(tracer: object, cls: type) -> bool:
    """Whether ``tracer`` (not None) reads events of class ``cls``.  A tracer that reads only
    some classes lists them in its ``reads`` attribute (``Metrics.observe``), so the hot
    paths skip building the events nobody reads, as an untraced run skips them all."""
    reads = getattr(tracer, "reads", None)
    return reads is None or cls in reads


@dataclass(frozen=True, slots=True)
class KvmPageFault:
    """``kvm_page_fault`` (system kvm)."""
    vcpu_id: int
    guest_rip: int
    fault_address: int
    error_code: int


@dataclass(frozen=True, slots=True)
class KvmMmuSpteRequested:
    """``kvm_mmu_spte_requested``: goal level before in-walk adjustments."""
    gfn: int
    pfn: int
    level: int


@dataclass(frozen=True, slots=True)
class KvmMmuSetSpte:
    """``kvm_mmu_set_spte``; ``sptep`` is the SPTE's physical address.  ``r``, ``x`` and
    ``u`` "depend on page entry type" and are computed at trace time (:meth:`assign`)."""
    gfn: int
    spte: int
    level: int
    sptep: int
    r: bool
    x: bool
    u: int

    @classmethod
    def assign(cls, m: SpteMasks, gfn: int, spte: int, level: int,
               sptep: int) -> "KvmMmuSetSpte":
        """``TP_fast_assign``: ``r = shadow_present_mask || (spte & PT_PRESENT_MASK)``,
        ``x = is_executable_pte(spte)``, ``u = shadow_user_mask ? !!(spte &
        shadow_user_mask) : -1``."""
        r = bool(m.shadow_present_mask) or bool(spte & PT_PRESENT_MASK)
        u = (1 if spte & m.shadow_user_mask else 0) if m.shadow_user_mask else -1
        return cls(gfn, spte, level, sptep, r, is_executable_pte(m, spte), u)


@dataclass(frozen=True, slots=True)
class KvmTdpMmuSpteChanged:
    """``kvm_tdp_mmu_spte_changed``."""
    as_id: int
    gfn: int
    level: int
    old_spte: int
    new_spte: int


@dataclass(frozen=True, slots=True)
class KvmMmuSplitHugePage:
    """``kvm_mmu_split_huge_page``; errno is 0 or negative."""
    gfn: int
    spte: int
    level: int
    errno: int


@dataclass(frozen=True, slots=True)
class KvmMmuPage:
    """The ``KVM_MMU_PAGE_FIELDS`` shared by ``kvm_mmu_get_page`` and
    ``kvm_mmu_prepare_zap_page``."""
    mmu_valid_gen: int
    gfn: int
    role: int
    root_count: int
    unsync: bool


@dataclass(frozen=True, slots=True)
class KvmMmuGetPage:
    """``kvm_mmu_get_page`` (``created`` is always true for the TDP MMU)."""
    page: KvmMmuPage
    created: bool


@dataclass(frozen=True, slots=True)
class KvmMmuPrepareZapPage:
    """``kvm_mmu_prepare_zap_page``."""
    page: KvmMmuPage


@dataclass(frozen=True, slots=True)
class FastPageFault:
    """``fast_page_fault``: the lockless fix of a direct-root leaf; ``ret`` is the RET_PF_*
    value (the tracepoint prints ``spurious``/``fixed`` from it)."""
    vcpu_id: int
    cr2_or_gpa: int
    error_code: int
    sptep: int
    old_spte: int
    new_spte: int
    ret: int


@dataclass(frozen=True, slots=True)
class MarkMmioSpte:
    """``mark_mmio_spte``."""
    sptep: int
    gfn: int
    access: int
    gen: int


@dataclass(frozen=True, slots=True)
class KvmBug:
    """``KVM_BUG_ON()`` fired: the VM is marked bugged (``kvm_vm_bugged``)."""
    function: str
    message: str


@dataclass(frozen=True, slots=True)
class KvmWarn:
    """A ``WARN_ON_ONCE()`` fired (not fatal to the VM, but a model invariant broke)."""
    function: str
    message: str


@dataclass(frozen=True, slots=True)
class KvmFlushRemoteTlbs:
    """A call of ``kvm_flush_remote_tlbs*``; every range flush degrades to a full one."""
    gfn: int
    nr_pages: int
