"""KVM's TDX glue — mirrors ``arch/x86/kvm/vmx/tdx.c`` (UPSTREAM 6.18/6.19 form with the
HP-v3 huge-page patches), plus the guest side of ``arch/x86/coco/tdx/`` that drives it.

``KvmTdx`` is the ``kvm_x86_ops`` implementation for a TD (``struct kvm_tdx`` state plus the
external page-table hooks) in front of one ``TdxModule``.  Every SEAMCALL KVM issues goes
through ``KvmTdx._seamcall`` so that it is counted and logged (``SeamcallRecord``) with the
tdx.c function that issued it; the ones the kernel treats as fatal go through ``TDX_BUG_ON``
(``KVM_BUG_ON`` + -EIO).  ``TdGuest`` is the guest kernel: ACCEPT with Linux's 1G→2M→4K
fallback, MapGPA conversions, touching memory.

Levels: hooks receive KVM levels (1 = 4K, 2 = 2M); SEAMCALLs take TDX levels
(``pg_level_to_tdx_sept_level`` = KVM level − 1).  gfns are private (shared bit stripped).

Simplifications (one line each):
- ``kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)`` (KVM_REQUEST_WAIT) is
  ``kick_all_vcpus``: a vCPU idle in the TD TD-exits before it returns; one entering or in a
  TDCALL exits at its interrupt window and the kicker waits for it (``kvm.py``).
- A kicked or exited vCPU stays outside until something (``TdGuest``, the caller) runs
  ``tdx_vcpu_run`` again; interrupts, posted IRQs and the fastpath are not modelled.
- ``tdx_is_sept_zap_err_due_to_premap`` is not modelled (6.19 removed the pre-map window).
- MR.EXTEND (``KVM_TDX_MEASURE_MEMORY_REGION``) is not modelled: the module lacks the leaf.
- Page contents are not modelled: ``tdx_quirk_reset_page``/``tdx_clear_page`` are no-ops.
- HKID allocation is a constant; TDR/TDCS/TDVPR pages are not allocated or reclaimed.
- DPAMT (PAMT.ADD caches) is not driven by KVM here; use a module without ``dpamt``.
- ``promote_external_spte`` (``mirror_promotion="seamcall"``) is not in any kernel: it is
  the minimal BLOCK → TRACK → PROMOTE (→ UNBLOCK on failure) a promoting KVM would need.
- The local retry loop of ``tdx_handle_ept_violation`` is bounded (``max_local_retries``)
  instead of stopping on pending signals/events.
- The guest retries a BUSY ACCEPT at the same level (Linux would fall back one level).
- MapGPA never returns TDVMCALL_STATUS_RETRY (no pending events between 2 MB chunks).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Final, Optional

from .events import KvmPageFault as KvmPageFaultEvent
from .events import traces
from .kvm import (
    KVM_REQ_OUTSIDE_GUEST_MODE,
    KVM_REQ_TLB_FLUSH,
    KvmX86Ops,
    _service_in_place,
    kvm_request_pending,
    kvm_vcpu_enter_guest_mode,
    kvm_vcpu_guest_entered,
    kvm_vcpu_guest_exited,
    kvm_vcpu_insn_end,
    kvm_vcpu_wait_exit_done,
)
from .kvm_main import (
    KvmUserError,
    hugepage_set_guest_inhibit,
    hugepage_test_guest_inhibit,
    kvm_range_has_memory_attributes,
    kvm_vm_set_mem_attributes,
)
from .memslot import KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEMSLOT_INVALID, KvmMemorySlot
from .mmu_fault import kvm_mmu_load, kvm_tdp_mmu_map_private_pfn
from .vmx import (
    EPT_VIOLATION_ACC_INSTR,
    EPT_VIOLATION_ACC_WRITE,
    EPT_VIOLATION_EXEC_FOR_RING3_LIN,
    EPT_VIOLATION_PROT_MASK,
)
# Imported under another name: a ``__name`` used inside a class body gets mangled.
from .vmx import __vmx_handle_ept_violation as vmx_handle_ept_violation_common
from .mmu_internal import (
    EBUSY,
    EFAULT,
    EINVAL,
    EIO,
    EOPNOTSUPP,
    RET_PF_RETRY,
)
from .native import mypyc_attr
from .policy import Policy
from .sched import RETRY_WAIT, VCPU
from .spte import (
    KVM_PAGES_PER_HPAGE,
    PAGE_SHIFT,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    VMX_EPT_RWX_MASK,
    gfn_round_for_level,
    spte_to_pfn,
)
from .tdp_mmu import (
    KVM_FILTER_PRIVATE,
    KVM_VALID_ROOTS,
    kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs,
    kvm_tdp_mmu_invalidate_roots,
    kvm_tdp_mmu_put_root,
    kvm_tdp_mmu_unmap_gfn_range,
    kvm_tdp_mmu_zap_invalidated_roots,
    tdp_mmu_max_gfn_exclusive,
)
from .tdx_module import (
    EEQ_TYPE_ACCEPT,
    EEQ_TYPE_PENDING_EPT_VIOLATION,
    OP_UNINITIALIZED,
    GuestAccess,
    TdxModule,
    TdxResult,
    status_name,
    tdx_operand_busy,
)
from .tdx_module.status import (
    TDX_INTERRUPTED_RESTARTABLE,
    TDX_OPERAND_BUSY,
    TDX_PAGE_SIZE_MISMATCH,
    TDX_SUCCESS,
    status_code,
)
from .vmm import VmConfig, create_vm

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm, KvmVcpu

# enum kvm_tdx_state (arch/x86/kvm/vmx/tdx.h).
TD_STATE_UNINITIALIZED: Final = 0
TD_STATE_INITIALIZED: Final = 1
TD_STATE_RUNNABLE: Final = 2
TD_STATE_NAMES = {TD_STATE_UNINITIALIZED: "UNINITIALIZED",
                  TD_STATE_INITIALIZED: "INITIALIZED", TD_STATE_RUNNABLE: "RUNNABLE"}

# enum exit_fastpath_completion (arch/x86/include/asm/kvm_host.h).
EXIT_FASTPATH_NONE: Final = 0
EXIT_FASTPATH_REENTER_GUEST: Final = 1
EXIT_FASTPATH_EXIT_HANDLED: Final = 2

EAGAIN: Final = 11

# TDX_MAP_GPA_MAX_LEN: MapGPA is forwarded to userspace 2 MB at a time.
TDX_MAP_GPA_MAX_LEN: Final = 2 << 20
# TDVMCALL status codes (arch/x86/include/asm/shared/tdx.h).
TDVMCALL_STATUS_SUCCESS: Final = 0x0000000000000000
TDVMCALL_STATUS_INVALID_OPERAND: Final = 0x8000000000000000
TDVMCALL_STATUS_ALIGN_ERROR: Final = 0x8000000000000002

# Linux's TDX_PS_* accept sizes (= TDX levels).
TDX_PS_4K, TDX_PS_2M, TDX_PS_1G = 0, 1, 2

SEPT_ZAP_KEY = ("tdx", "wait_for_sept_zap")


def tdx_is_sept_violation_unexpected_pending(eeq: int, exit_qual: int) -> bool:
    """``tdx_is_sept_violation_unexpected_pending``: a PENDING_EPT_VIOLATION exit is the
    guest touching an unaccepted page only if the translation allowed nothing (no PROT
    bits, not user-executable)."""
    if eeq & 0xF != EEQ_TYPE_PENDING_EPT_VIOLATION:
        return False
    return not exit_qual & EPT_VIOLATION_PROT_MASK \
        and not exit_qual & EPT_VIOLATION_EXEC_FOR_RING3_LIN


def pg_level_to_tdx_sept_level(level: int) -> int:
    """``pg_level_to_tdx_sept_level``: KVM level 1 (4K) is TDX level 0."""
    return level - 1


@dataclass(frozen=True, slots=True)
class SeamcallRecord:
    """One SEAMCALL KVM issued: the tdx.c function, the leaf, the gfn and KVM level it
    concerned (0/0 for TD-wide calls) and the 64-bit status.  Emitted to ``Kvm.tracer``."""

    function: str
    leaf: str
    gfn: int
    level: int
    status: int

    @property
    def name(self) -> str:
        return status_name(self.status)


@dataclass
class TdxStats:
    """Per-run counters of the glue (module-side counters live on ``TdxModule``)."""

    kicks: int = 0                 # kvm_make_all_cpus_request(OUTSIDE_GUEST_MODE) rounds
    kick_exits: int = 0            # vCPUs forced out of guest mode by those kicks
    busy_retries: int = 0          # tdh_do_no_vcpus second attempts after TDX_OPERAND_BUSY
    fault_busy: int = 0            # -EBUSY from AUG/ADD/SEPT.ADD (becomes RET_PF_RETRY)
    ept_violations: int = 0
    accept_exits: int = 0          # EPT violations with EEQ type ACCEPT
    local_retries: int = 0         # extra kvm_mmu_page_fault calls in the retry loop
    accept_level_write_locks: int = 0  # write mmu_lock taken by tdx_honor_guest_accept_level
    accept_4k_where_2m_possible: int = 0
    vcpu_enters: int = 0
    vcpu_enter_refused: int = 0    # wait_for_sept_zap or VP.ENTER BUSY
    promote_attempts: int = 0
    promote_successes: int = 0
    promote_failures: Counter = field(default_factory=Counter)  # status name -> count
    splits: int = 0
    removes: int = 0
    wbinvds: int = 0


class KvmTdx(KvmX86Ops):
    """``struct kvm_tdx`` + the TDX ``kvm_x86_ops``.  One per TD; ``module`` is its TDX
    module.  ``promote_skip_block``/``promote_skip_track`` break the hypothetical promotion
    sequence on purpose, to show which module check then refuses PAGE.PROMOTE."""

    def __init__(self, module: Optional[TdxModule] = None, *, max_local_retries: int = 64,
                 record: bool = True, **module_kwargs: object) -> None:
        self.module = module
        self._module_kwargs = module_kwargs
        self.kvm: Optional["Kvm"] = None
        self.state = TD_STATE_UNINITIALIZED
        self.hkid = -1
        self.wait_for_sept_zap = False
        self.page_add_src: Optional[int] = None
        self.max_local_retries = max_local_retries
        self.record = record
        self.promote_skip_block = False
        self.promote_skip_track = False
        self.torn_down = False
        self.stats = TdxStats()
        self.log: list[SeamcallRecord] = []
        # (function, leaf, status) of every error TDX_BUG_ON treated as fatal.
        self.fatal_errors: list[tuple[str, str, int]] = []
        self.last_promote_status: Optional[int] = None

    # =========================================================================== plumbing
    def _seamcall(self, function: str, leaf: str, gfn: int, level: int,
                  fn: Callable[..., TdxResult], *args: object, **kw: object) -> TdxResult:
        """Issue one SEAMCALL and record it."""
        r = fn(*args, **kw)
        if self.record:
            rec = SeamcallRecord(function, leaf, gfn, level, r.status)
            self.log.append(rec)
            if self.kvm is not None and self.kvm.tracer is not None:
                self.kvm.tracer(rec)
        return r

    def TDX_BUG_ON(self, kvm: "Kvm", r: TdxResult, function: str, leaf: str) -> bool:
        """``TDX_BUG_ON``/``TDX_BUG_ON_2``: any non-zero status is a KVM bug (the VM is
        marked bugged); returns whether it fired."""
        if r.status == TDX_SUCCESS:
            return False
        self.fatal_errors.append((function, leaf, r.status))
        kvm.KVM_BUG_ON(True, function, f"{leaf} failed: {r.name} "
                                       f"(rcx {r.rcx:#x} rdx {r.rdx:#x})")
        return True

    def is_hkid_assigned(self) -> bool:
        return self.hkid >= 0

    def is_td_runnable(self) -> bool:
        return self.state == TD_STATE_RUNNABLE

    def seamcalls(self, leaf: Optional[str] = None) -> list[SeamcallRecord]:
        """The recorded SEAMCALLs, optionally of one leaf."""
        return [r for r in self.log if leaf is None or r.leaf == leaf]

    def leaf_sequence(self, start: int = 0) -> list[str]:
        """Short leaf names (``BLOCK``, ``TRACK``, ...) of the log from ``start`` on."""
        return [_short(r.leaf) for r in self.log[start:]]

    # ======================================================================= vCPU entry/exit
    def _td_exited(self, vcpu: "KvmVcpu") -> None:
        """The vCPU left the TD (the module already dropped its epoch reference)."""
        kvm_vcpu_guest_exited(vcpu)

    def _td_exit(self, vcpu: "KvmVcpu") -> None:
        """A TD exit: the module drops REFCOUNT[VCPU_EPOCH & 1], KVM leaves guest mode."""
        vcpu.in_guest = False
        self.module.td_exit(vcpu.vcpu_id)
        self._td_exited(vcpu)

    def vcpu_kick_exit(self, vcpu: "KvmVcpu") -> None:
        """The TD exit an IPI forces on a vCPU in the TD."""
        self._td_exit(vcpu)
        self.stats.kick_exits += 1

    def vcpu_ipi(self, vcpu: "KvmVcpu", req: str) -> None:
        """KVM_REQ_OUTSIDE_GUEST_MODE TD-exits the vCPU; any other request is serviced in
        place (shared-EPT TLB flushed), as the counters have always had it."""
        if req != KVM_REQ_OUTSIDE_GUEST_MODE:
            _service_in_place(vcpu)
            return
        vcpu.in_guest = False
        self.vcpu_kick_exit(vcpu)

    def kick_all_vcpus(self, kvm: "Kvm", req: str = KVM_REQ_OUTSIDE_GUEST_MODE) -> int:
        """``kvm_make_all_cpus_request(kvm, req)`` with KVM_REQUEST_WAIT: IPI every vCPU not
        outside guest mode and wait for its acknowledgement — a vCPU in the TD TD-exits,
        which is what drains the TDX epoch refcounts.  Returns how many vCPUs were forced
        out."""
        before = self.stats.kick_exits
        kvm.kvm_make_all_cpus_request(req)
        self.stats.kicks += 1
        return self.stats.kick_exits - before

    def tdx_vcpu_create(self, vcpu: "KvmVcpu") -> None:
        """``tdx_vcpu_create`` + ``tdx_vcpu_init`` (TDH.VP.CREATE/ADDCX/INIT collapsed)."""
        self.module.tdh_vp_create(vcpu.vcpu_id)

    def tdx_vcpu_run(self, vcpu: "KvmVcpu") -> int:
        """``vcpu_enter_guest`` → ``tdx_vcpu_run``: service requests, IN_GUEST_MODE (before
        anything a kick must see, with the barrier), ``kvm_vcpu_exit_request``, then the
        ``wait_for_sept_zap`` check and TDH.VP.ENTER.

        Returns EXIT_FASTPATH_NONE when the vCPU is now in guest mode,
        EXIT_FASTPATH_EXIT_HANDLED when entry was skipped (cancelled by a pending request
        or kick, ``wait_for_sept_zap`` set, or VP.ENTER returned BUSY so pending kicks can
        be acknowledged), the EPT-violation handler's result when the zero-step filter
        refused entry, -EINVAL before finalization (``tdx_vcpu_pre_run``) or -EIO (VM
        dead)."""
        kvm = vcpu.kvm
        if kvm.vm_dead or vcpu.kvm_check_request("KVM_REQ_VM_DEAD"):
            return -EIO
        if not self.is_td_runnable():
            return -EINVAL  # tdx_vcpu_pre_run: KVM_RUN only after KVM_TDX_FINALIZE_VM
        if vcpu.in_guest:
            return EXIT_FASTPATH_NONE
        kvm_vcpu_wait_exit_done(vcpu)
        kvm_request_pending(vcpu)  # the servicing below reads vcpu->requests
        if vcpu.kvm_check_request("KVM_REQ_MMU_FREE_OBSOLETE_ROOTS"):
            kvm_mmu_load(vcpu)
        # KVM_REQ_TLB_FLUSH → tdx_flush_tlb_all (shared EPT only; the module flushes S-EPT).
        if vcpu.kvm_check_request(KVM_REQ_TLB_FLUSH):
            vcpu.tlb.flush()
        if not kvm_vcpu_enter_guest_mode(vcpu):
            self.stats.vcpu_enter_refused += 1
            return EXIT_FASTPATH_EXIT_HANDLED
        kvm.sched.point(VCPU, SEPT_ZAP_KEY, False)
        if self.wait_for_sept_zap:
            # The zapping thread waits for all vCPUs to stay out (tdh_do_no_vcpus).
            self.stats.vcpu_enter_refused += 1
            kvm_vcpu_guest_exited(vcpu)
            return EXIT_FASTPATH_EXIT_HANDLED
        r = self._seamcall("tdx_vcpu_run", "TDH.VP.ENTER", 0, 0,
                           self.module.tdh_vp_enter, vcpu.vcpu_id)
        if tdx_operand_busy(r.status):
            self.stats.vcpu_enter_refused += 1
            kvm_vcpu_guest_exited(vcpu)
            return EXIT_FASTPATH_EXIT_HANDLED
        if r.status != TDX_SUCCESS:
            kvm_vcpu_guest_exited(vcpu)
            self.TDX_BUG_ON(kvm, r, "tdx_vcpu_run", "TDH.VP.ENTER")
            return -EIO
        self.stats.vcpu_enters += 1
        if r.exit is not None:
            # Zero-step mitigation refused entry and faked an EPT violation.
            self._td_exited(vcpu)
            return self.tdx_handle_ept_violation(vcpu, r.exit.gpa, r.exit.eeq)
        kvm_vcpu_guest_entered(vcpu)
        return EXIT_FASTPATH_NONE

    def tdx_vcpu_exit(self, vcpu: "KvmVcpu") -> None:
        """A TD exit for any other reason (TDVMCALL, interrupt, HLT)."""
        if vcpu.in_guest:
            self._td_exit(vcpu)

    # =========================================================================== TD lifecycle
    def tdx_vm_init(self, kvm: "Kvm") -> None:
        """``tdx_vm_init`` + ``__tdx_td_init`` up to TDH.MNG.CREATE/KEY.CONFIG: bind the VM,
        allocate the HKID and create the TD in the module (UNINITIALIZED)."""
        if self.kvm is not None:
            raise ValueError("KvmTdx already bound to a VM")
        self.kvm = kvm
        if self.module is None:
            kw = dict(self._module_kwargs)
            kw.setdefault("pwl", kvm.root_level - 1)
            kw.setdefault("gpaw", 48 if kvm.root_level == 4 else 52)
            kw.setdefault("op_state", OP_UNINITIALIZED)
            self.module = TdxModule(kvm.sched, **kw)
        self.hkid = 1

    def tdx_td_init(self, kvm: "Kvm") -> int:
        """``KVM_TDX_INIT_VM`` → ``tdx_td_init``: TDH.MNG.INIT (TD INITIALIZED)."""
        if self.state != TD_STATE_UNINITIALIZED:
            return -EINVAL
        r = self._seamcall("tdx_td_init", "TDH.MNG.INIT", 0, 0, self.module.tdh_mng_init)
        if self.TDX_BUG_ON(kvm, r, "tdx_td_init", "TDH.MNG.INIT"):
            return -EIO
        self.state = TD_STATE_INITIALIZED
        return 0

    def tdx_gmem_post_populate(self, kvm: "Kvm", vcpu: "KvmVcpu", gfn: int, pfn: int,
                               src_pfn: int) -> int:
        """``tdx_gmem_post_populate``: map one 4K page through the TDP MMU with
        ``page_add_src`` set, so ``tdx_sept_set_private_spte`` does TDH.MEM.PAGE.ADD."""
        if kvm.KVM_BUG_ON(self.page_add_src is not None, "tdx_gmem_post_populate",
                          "page_add_src already set"):
            return -EIO
        self.page_add_src = src_pfn
        ret = kvm_tdp_mmu_map_private_pfn(vcpu, gfn, pfn)
        self.page_add_src = None
        return ret

    def tdx_vcpu_init_mem_region(self, vcpu: "KvmVcpu", gpa: int, nr_pages: int,
                                 src_pfn: int = 0x10000) -> int:
        """``KVM_TDX_INIT_MEM_REGION`` → ``tdx_vcpu_init_mem_region`` → ``kvm_gmem_populate``:
        add the initial image page by page (PAGE.ADD is 4K only).  ``src_pfn`` is the first
        source page (contents are not modelled)."""
        kvm = vcpu.kvm
        if self.state != TD_STATE_INITIALIZED:
            return -EINVAL
        if gpa & 0xFFF or nr_pages <= 0:
            return -EINVAL
        start = gpa >> PAGE_SHIFT
        if kvm.kvm_is_addr_direct(gpa) or not kvm_range_has_memory_attributes(
                kvm, start, start + nr_pages, KVM_MEMORY_ATTRIBUTE_PRIVATE):
            return -EINVAL
        for i in range(nr_pages):
            gfn = start + i
            slot = kvm.gfn_to_memslot(gfn)
            if slot is None or slot.gmem is None:
                return -EFAULT
            pfn, _order = slot.gmem.kvm_gmem_get_pfn(gfn - slot.base_gfn + slot.gmem_offset)
            ret = self.tdx_gmem_post_populate(kvm, vcpu, gfn, pfn, src_pfn + i)
            if ret:
                return ret
        return 0

    def tdx_td_finalize(self, kvm: "Kvm") -> int:
        """``KVM_TDX_FINALIZE_VM`` → ``tdx_td_finalize``: TDH.MR.FINALIZE, TD RUNNABLE."""
        if self.state != TD_STATE_INITIALIZED:
            return -EINVAL
        r = self._seamcall("tdx_td_finalize", "TDH.MR.FINALIZE", 0, 0,
                           self.module.tdh_mr_finalize)
        if self.TDX_BUG_ON(kvm, r, "tdx_td_finalize", "TDH.MR.FINALIZE"):
            return -EIO
        # smp_wmb(): pairs with the smp_rmb() in tdx_sept_set_private_spte.
        self.state = TD_STATE_RUNNABLE
        kvm.pre_fault_allowed = True  # KVM_PRE_FAULT_MEMORY works from now on
        return 0

    def tdx_mmu_release_hkid(self, kvm: "Kvm") -> int:
        """``tdx_mmu_release_hkid``: flush the vCPUs off their LPs, TDH.MNG.VPFLUSHDONE,
        cache write-back, TDH.MNG.KEY.FREEID.  Afterwards page tables may be reclaimed."""
        if not self.is_hkid_assigned():
            return 0
        self.kick_all_vcpus(kvm)
        for leaf, fn in (("TDH.MNG.VPFLUSHDONE", self.module.tdh_mng_vpflushdone),
                         ("TDH.MNG.KEY.FREEID", self.module.tdh_mng_key_freeid)):
            r = self._seamcall("tdx_mmu_release_hkid", leaf, 0, 0, fn)
            if self.TDX_BUG_ON(kvm, r, "tdx_mmu_release_hkid", leaf):
                return -EIO
        self.hkid = -1
        return 0

    def tdx_vm_destroy(self, kvm: "Kvm") -> None:
        """TD teardown in the kernel's order (reference §5.5): guest_memfd release zaps
        every private leaf (HKID still assigned: BLOCK/TRACK/REMOVE), then the HKID is
        released, then ``kvm_mmu_uninit_tdp_mmu`` zaps all roots, reclaiming S-EPT pages
        (``tdx_sept_free_private_spt``)."""
        kvm.mmu_lock.write_lock()
        kvm_tdp_mmu_unmap_gfn_range(kvm, 0, tdp_mmu_max_gfn_exclusive(kvm),
                                    KVM_FILTER_PRIVATE, True, False)
        kvm.mmu_lock.write_unlock()
        self.tdx_mmu_release_hkid(kvm)
        kvm.mmu_lock.write_lock()
        kvm_tdp_mmu_invalidate_roots(kvm, KVM_VALID_ROOTS)
        kvm_tdp_mmu_zap_invalidated_roots(kvm, False)
        # kvm_mmu_unload() of every vCPU drops its references.
        for vcpu in kvm.vcpus:
            for attr in ("mirror_root", "root"):
                root = getattr(vcpu, attr)
                if root is not None:
                    kvm_tdp_mmu_put_root(kvm, root)
                    setattr(vcpu, attr, None)
        kvm.mmu_lock.write_unlock()
        self.torn_down = True

    # ============================================================ tdh_do_no_vcpus, tdx_track
    def tdh_do_no_vcpus(self, kvm: "Kvm", function: str, leaf: str, gfn: int, level: int,
                        fn: Callable[..., TdxResult], *args: object) -> TdxResult:
        """``tdh_do_no_vcpus(f, kvm, ...)``: call f; on TDX_OPERAND_BUSY keep vCPUs out
        (``wait_for_sept_zap``), kick them all out of guest mode and call f once more —
        "guaranteed to succeed, absent KVM and/or TDX-Module bugs"."""
        kvm.mmu_lock.lockdep_assert_held_write()
        r = self._seamcall(function, leaf, gfn, level, fn, *args)
        if tdx_operand_busy(r.status):
            kvm.sched.point(VCPU, SEPT_ZAP_KEY, True)
            self.wait_for_sept_zap = True
            self.kick_all_vcpus(kvm)
            self.stats.busy_retries += 1
            r = self._seamcall(function, leaf, gfn, level, fn, *args)
            kvm.sched.point(VCPU, SEPT_ZAP_KEY, True)
            self.wait_for_sept_zap = False
        return r

    def tdx_track(self, kvm: "Kvm") -> None:
        """``tdx_track``: TDH.MEM.TRACK (bump the TD epoch), then kick every vCPU so none
        still runs in the old epoch; the module flushes the TLB on their next entry."""
        if not self.is_td_runnable():
            return  # before finalization nothing runs, nothing needs tracking
        kvm.mmu_lock.lockdep_assert_held_write()
        r = self.tdh_do_no_vcpus(kvm, "tdx_track", "TDH.MEM.TRACK", 0, 0,
                                 self.module.tdh_mem_track)
        self.TDX_BUG_ON(kvm, r, "tdx_track", "TDH.MEM.TRACK")
        self.kick_all_vcpus(kvm)

    # ============================================================== the external-PT hooks
    def link_external_spt(self, kvm: "Kvm", gfn: int, level: int, external_spt: int) -> int:
        return self.tdx_sept_link_private_spt(kvm, gfn, level, external_spt)

    def tdx_sept_link_private_spt(self, kvm: "Kvm", gfn: int, level: int,
                                  external_spt: int) -> int:
        """``tdx_sept_link_private_spt``: TDH.MEM.SEPT.ADD at the non-leaf's TDX level."""
        r = self._seamcall("tdx_sept_link_private_spt", "TDH.MEM.SEPT.ADD", gfn, level,
                           self.module.tdh_mem_sept_add, gfn << PAGE_SHIFT,
                           pg_level_to_tdx_sept_level(level), external_spt)
        if tdx_operand_busy(r.status):
            self.stats.fault_busy += 1
            return -EBUSY
        if self.TDX_BUG_ON(kvm, r, "tdx_sept_link_private_spt", "TDH.MEM.SEPT.ADD"):
            return -EIO
        return 0

    def set_external_spte(self, kvm: "Kvm", gfn: int, level: int, mirror_spte: int) -> int:
        return self.tdx_sept_set_private_spte(kvm, gfn, level, mirror_spte)

    def tdx_sept_set_private_spte(self, kvm: "Kvm", gfn: int, level: int,
                                  mirror_spte: int) -> int:
        """``tdx_sept_set_private_spte``: RUNNABLE → TDH.MEM.PAGE.AUG (page PENDING until
        the guest accepts), else TDH.MEM.PAGE.ADD from ``page_add_src`` (TD build)."""
        pfn = spte_to_pfn(mirror_spte)
        # 4K only, unless HP-v3's tdx_huge_page allows 2M once RUNNABLE.
        huge_ok = (level == PG_LEVEL_2M and kvm.policy.tdx_huge_page and self.is_td_runnable())
        if kvm.KVM_BUG_ON(level != PG_LEVEL_4K and not huge_ok, "tdx_sept_set_private_spte",
                          f"unsupported level {level}"):
            return -EIO
        # Private memory is always mapped RWX (TDX ignores the mirror's permissions).
        kvm.WARN_ON_ONCE((mirror_spte & VMX_EPT_RWX_MASK) != VMX_EPT_RWX_MASK,
                         "tdx_sept_set_private_spte", f"mirror SPTE {mirror_spte:#x} not RWX")
        gpa = gfn << PAGE_SHIFT
        if self.is_td_runnable():
            leaf = "TDH.MEM.PAGE.AUG"
            r = self._seamcall("tdx_mem_page_aug", leaf, gfn, level,
                               self.module.tdh_mem_page_aug, gpa,
                               pg_level_to_tdx_sept_level(level), pfn)
        else:
            leaf = "TDH.MEM.PAGE.ADD"
            if kvm.KVM_BUG_ON(self.page_add_src is None, "tdx_mem_page_add",
                              "no page_add_src: private fault before finalization"):
                return -EIO
            r = self._seamcall("tdx_mem_page_add", leaf, gfn, level,
                               self.module.tdh_mem_page_add, gpa, pfn, self.page_add_src)
        if tdx_operand_busy(r.status):
            self.stats.fault_busy += 1
            return -EBUSY
        if self.TDX_BUG_ON(kvm, r, "tdx_sept_set_private_spte", leaf):
            return -EIO
        return 0

    def remove_external_spte(self, kvm: "Kvm", gfn: int, level: int, mirror_spte: int) -> None:
        self.tdx_sept_remove_private_spte(kvm, gfn, level, mirror_spte)

    def tdx_sept_remove_private_spte(self, kvm: "Kvm", gfn: int, level: int,
                                     mirror_spte: int) -> None:
        """``tdx_sept_remove_private_spte`` (write lock): BLOCK, TRACK + kick, REMOVE, then
        TDH.PHYMEM.PAGE.WBINVD on every 4K page and clear it.  Any failure bugs the VM."""
        fn_name = "tdx_sept_remove_private_spte"
        if kvm.KVM_BUG_ON(not self.is_hkid_assigned(), fn_name, "HKID already released"):
            return
        kvm.mmu_lock.lockdep_assert_held_write()
        if kvm.KVM_BUG_ON(level > PG_LEVEL_2M or (level == PG_LEVEL_2M
                                                  and not kvm.policy.tdx_huge_page),
                          fn_name, f"unsupported level {level}"):
            return
        gpa = gfn << PAGE_SHIFT
        tdx_level = pg_level_to_tdx_sept_level(level)
        r = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.RANGE.BLOCK", gfn, level,
                                 self.module.tdh_mem_range_block, gpa, tdx_level)
        if self.TDX_BUG_ON(kvm, r, fn_name, "TDH.MEM.RANGE.BLOCK"):
            return
        self.tdx_track(kvm)
        r = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.PAGE.REMOVE", gfn, level,
                                 self.module.tdh_mem_page_remove, gpa, tdx_level)
        if self.TDX_BUG_ON(kvm, r, fn_name, "TDH.MEM.PAGE.REMOVE"):
            return
        self.stats.removes += 1
        pfn = spte_to_pfn(mirror_spte)
        for i in range(KVM_PAGES_PER_HPAGE(level)):
            r = self._seamcall("tdx_sept_remove_private_spte", "TDH.PHYMEM.PAGE.WBINVD", gfn + i,
                               PG_LEVEL_4K, self.module.tdh_phymem_page_wbinvd, pfn + i)
            if self.TDX_BUG_ON(kvm, r, fn_name, "TDH.PHYMEM.PAGE.WBINVD"):
                return
            self.stats.wbinvds += 1
        # tdx_quirk_reset_page(): contents are not modelled.

    def free_external_spt(self, kvm: "Kvm", gfn: int, level: int, external_spt: int) -> int:
        return self.tdx_sept_free_private_spt(kvm, gfn, level, external_spt)

    def tdx_sept_free_private_spt(self, kvm: "Kvm", gfn: int, level: int,
                                  external_spt: int) -> int:
        """``tdx_sept_free_private_spt``: S-EPT pages are only freed at teardown, after
        the HKID is released: TDH.PHYMEM.PAGE.RECLAIM."""
        if kvm.KVM_BUG_ON(self.is_hkid_assigned(), "tdx_sept_free_private_spt",
                          "S-EPT page freed while the HKID is assigned"):
            return -EINVAL
        r = self._seamcall("tdx_reclaim_page", "TDH.PHYMEM.PAGE.RECLAIM", gfn, level,
                           self.module.tdh_phymem_page_reclaim, external_spt)
        if r.status != TDX_SUCCESS:
            return -EIO  # handle_removed_pt WARNs and leaks the page
        return 0

    def split_external_spte(self, kvm: "Kvm", gfn: int, level: int, old_spte: int,
                            new_external_spt: int, shared: bool) -> int:
        return self.tdx_sept_split_private_spte(kvm, gfn, level, old_spte, new_external_spt,
                                                shared)

    def tdx_sept_split_private_spte(self, kvm: "Kvm", gfn: int, level: int, old_spte: int,
                                    new_external_spt: int, shared: bool) -> int:
        """HP-v3 ``tdx_sept_split_private_spte``: only under the write lock (without
        NON-BLOCKING-RESIZE a BUSY DEMOTE could not be undone under the shared lock):
        BLOCK, TRACK + kick, DEMOTE into the new S-EPT page; no UNBLOCK afterwards."""
        fn_name = "tdx_sept_split_private_spte"
        if kvm.WARN_ON_ONCE(shared, fn_name, "split of a mirror SPTE under the shared lock"):
            return -EOPNOTSUPP
        kvm.mmu_lock.lockdep_assert_held_write()
        if kvm.KVM_BUG_ON(level != PG_LEVEL_2M or not self.is_td_runnable(), fn_name,
                          f"split at level {level} in TD state {TD_STATE_NAMES[self.state]}"):
            return -EIO
        gpa = gfn << PAGE_SHIFT
        tdx_level = pg_level_to_tdx_sept_level(level)
        r = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.RANGE.BLOCK", gfn, level,
                                 self.module.tdh_mem_range_block, gpa, tdx_level)
        if self.TDX_BUG_ON(kvm, r, fn_name, "TDH.MEM.RANGE.BLOCK"):
            return -EIO
        self.tdx_track(kvm)
        r = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.PAGE.DEMOTE", gfn, level,
                                 self.module.tdh_mem_page_demote, gpa, tdx_level,
                                 new_external_spt)
        if self.TDX_BUG_ON(kvm, r, fn_name, "TDH.MEM.PAGE.DEMOTE"):
            return -EIO
        self.stats.splits += 1
        return 0

    def promote_external_spte(self, kvm: "Kvm", gfn: int, level: int, new_spte: int) -> int:
        return self.tdx_sept_promote_private_spte(kvm, gfn, level, new_spte)

    def tdx_sept_promote_private_spte(self, kvm: "Kvm", gfn: int, level: int,
                                      new_spte: int) -> int:
        """Not in any kernel (``mirror_promotion="seamcall"``): under the write lock,
        RANGE.BLOCK the non-leaf at ``level``, TRACK + kick, PAGE.PROMOTE, WBINVD the freed
        S-EPT page.  On failure, TRACK (if not done) and UNBLOCK so the range works again,
        record the module's status and return it as -errno (BUSY → -EBUSY, interrupted →
        -EAGAIN, anything else → -EIO); the VM is not bugged, the caller maps 4K instead."""
        fn_name = "tdx_sept_promote_private_spte"
        kvm.mmu_lock.lockdep_assert_held_write()
        self.stats.promote_attempts += 1
        gpa = gfn << PAGE_SHIFT
        tdx_level = pg_level_to_tdx_sept_level(level)
        blocked = tracked = False
        if not self.promote_skip_block:
            r = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.RANGE.BLOCK", gfn, level,
                                     self.module.tdh_mem_range_block, gpa, tdx_level)
            if r.status != TDX_SUCCESS:
                return self._promote_failed(kvm, r, blocked=False, tracked=False, gfn=gfn,
                                            level=level)
            blocked = True
        if not self.promote_skip_track:
            self.tdx_track(kvm)
            tracked = True
        r = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.PAGE.PROMOTE", gfn, level,
                                 self.module.tdh_mem_page_promote, gpa, tdx_level)
        if r.status != TDX_SUCCESS:
            return self._promote_failed(kvm, r, blocked=blocked, tracked=tracked, gfn=gfn,
                                        level=level)
        self.last_promote_status = r.status
        self.stats.promote_successes += 1
        merged = self.module.entry(gpa, tdx_level)
        kvm.KVM_BUG_ON(merged is None or merged[1] != spte_to_pfn(new_spte), fn_name,
                       f"PROMOTE merged pfn {merged} but the mirror wants "
                       f"{spte_to_pfn(new_spte):#x}")
        # The module freed its child S-EPT page (RCX); flush it before the host reuses it.
        r = self._seamcall(fn_name, "TDH.PHYMEM.PAGE.WBINVD", gfn, level,
                           self.module.tdh_phymem_page_wbinvd, r.rcx >> PAGE_SHIFT)
        self.TDX_BUG_ON(kvm, r, fn_name, "TDH.PHYMEM.PAGE.WBINVD")
        return 0

    def _promote_failed(self, kvm: "Kvm", r: TdxResult, *, blocked: bool, tracked: bool,
                        gfn: int, level: int) -> int:
        """Undo BLOCK so the range is usable again (UNBLOCK needs the block TLB-tracked),
        and report why the module refused."""
        fn_name = "tdx_sept_promote_private_spte"
        self.last_promote_status = r.status
        self.stats.promote_failures[r.name] += 1
        if blocked:
            if not tracked:
                self.tdx_track(kvm)
            u = self.tdh_do_no_vcpus(kvm, fn_name, "TDH.MEM.RANGE.UNBLOCK", gfn, level,
                                     self.module.tdh_mem_range_unblock, gfn << PAGE_SHIFT,
                                     pg_level_to_tdx_sept_level(level))
            # An UNBLOCK failure leaves the range blocked forever: that one is fatal.
            if self.TDX_BUG_ON(kvm, u, fn_name, "TDH.MEM.RANGE.UNBLOCK"):
                return -EIO
        if status_code(r.status) == TDX_OPERAND_BUSY:
            return -EBUSY
        if status_code(r.status) == TDX_INTERRUPTED_RESTARTABLE:
            return -EAGAIN
        return -EIO

    def gmem_max_mapping_level(self, kvm: "Kvm", pfn: int, is_private: bool) -> int:
        return self.tdx_gmem_max_mapping_level(kvm, pfn, is_private)

    def tdx_gmem_max_mapping_level(self, kvm: "Kvm", pfn: int, is_private: bool) -> int:
        """``tdx_gmem_max_mapping_level``: shared → 0 (no limit); private → 4K (UPSTREAM,
        or HP-v3 before RUNNABLE), else the policy's level (2M; never 1G)."""
        if not is_private:
            return 0
        if not kvm.policy.tdx_huge_page or not self.is_td_runnable():
            return PG_LEVEL_4K
        return min(kvm.policy.tdx_private_max_level, PG_LEVEL_2M)

    # ================================================================== EPT violations
    def tdx_honor_guest_accept_level(self, vcpu: "KvmVcpu", gfn: int, eeq: int) -> int:
        """HP-v3 ``tdx_honor_guest_accept_level``: an ACCEPT exit at 4K/2M splits any
        larger private mapping of the accept-aligned range (write lock) and sets
        GUEST_INHIBIT at level+1 (and level+2 for 4K) so KVM never maps bigger again.
        With ``Policy.accept_level_handling = "draft-2025-06"`` the measured draft rule
        runs instead (``_tdx_check_accept_level_draft``, lore
        <aF0Kg8FcHVMvsqSo@yzhao56-desk.sh.intel.com>): 4K exits only, inhibit at 2M only,
        split ``[gfn, gfn + 1)``."""
        kvm = vcpu.kvm
        slot = kvm.gfn_to_memslot(gfn)
        if slot is None or eeq & 0xF != EEQ_TYPE_ACCEPT:
            return 0
        level = ((eeq >> 32) & 7) + 1
        if kvm.policy.accept_level_handling == "draft-2025-06":
            return self._tdx_check_accept_level_draft(kvm, slot, gfn, level)
        if level not in (PG_LEVEL_4K, PG_LEVEL_2M):
            return 0
        # HP-v3 tests the inhibit without the lock; the RFC took the lock every time.
        if kvm.policy.lpage_check_first and hugepage_test_guest_inhibit(slot, gfn, level + 1):
            return 0
        base = gfn_round_for_level(gfn, level)
        kvm.mmu_lock.write_lock()
        self.stats.accept_level_write_locks += 1
        if level == PG_LEVEL_4K and not hugepage_test_guest_inhibit(slot, gfn, PG_LEVEL_2M) \
                and self._could_map_2m(kvm, slot, gfn):
            self.stats.accept_4k_where_2m_possible += 1
        # kvm_split_cross_boundary_leafs(); no TLB flush needed: BLOCK+TRACK+kick did it.
        ret = kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs(
            kvm, base, base + KVM_PAGES_PER_HPAGE(level), KVM_FILTER_PRIVATE, False)
        if not ret:
            hugepage_set_guest_inhibit(slot, gfn, level + 1)
            if level == PG_LEVEL_4K:
                hugepage_set_guest_inhibit(slot, gfn, level + 2)
        kvm.mmu_lock.write_unlock()
        return ret

    def _tdx_check_accept_level_draft(self, kvm: "Kvm", slot: KvmMemorySlot, gfn: int,
                                      level: int) -> int:
        """Yan Zhao's draft ``tdx_check_accept_level`` (lore
        <aF0Kg8FcHVMvsqSo@yzhao56-desk.sh.intel.com>, 2025-06-26), the code the published
        write-lock counts (≈17626 without the lpage_info pre-check, ≈11 with it) were
        measured on::

            level = (eeq_info & GENMASK(2, 0)) + 1;
            if (level == PG_LEVEL_4K) {
                if (!hugepage_test_guest_inhibit(slot, gfn, PG_LEVEL_2M)) {
                    scoped_guard(write_lock, &kvm->mmu_lock) {
                        kvm_split_boundary_leafs(kvm, {gfn, gfn + 1, KVM_FILTER_PRIVATE});
                        hugepage_set_guest_inhibit(slot, gfn, PG_LEVEL_2M);
                    }
                }
            }

        Only 4K ACCEPT exits take the write lock; a 2M ACCEPT never does; the inhibit is
        at 2M only (no 1G).  ``lpage_check_first=False`` drops the unlocked
        ``hugepage_test_guest_inhibit`` test (the 17626 variant): every 4K ACCEPT exit in
        a memslot takes the lock.  (Caller checked slot and EEQ type.)"""
        if level != PG_LEVEL_4K:
            return 0
        if kvm.policy.lpage_check_first and hugepage_test_guest_inhibit(slot, gfn, PG_LEVEL_2M):
            return 0
        kvm.mmu_lock.write_lock()
        self.stats.accept_level_write_locks += 1
        if not hugepage_test_guest_inhibit(slot, gfn, PG_LEVEL_2M) \
                and self._could_map_2m(kvm, slot, gfn):
            self.stats.accept_4k_where_2m_possible += 1
        ret = kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs(
            kvm, gfn, gfn + 1, KVM_FILTER_PRIVATE, False)
        if not ret:
            hugepage_set_guest_inhibit(slot, gfn, PG_LEVEL_2M)
        kvm.mmu_lock.write_unlock()
        return ret

    def _could_map_2m(self, kvm: "Kvm", slot: KvmMemorySlot, gfn: int) -> bool:
        """Would KVM map this gfn at 2M were it not for the guest's 4K accept? (lpage_info
        clear, guest_memfd has a 2M folio, TDX allows 2M) — Yan's "4K accept where 2M
        possible" event."""
        if slot.disallow_lpage(gfn, PG_LEVEL_2M):
            return False
        if self.tdx_gmem_max_mapping_level(kvm, 0, True) < PG_LEVEL_2M:
            return False
        gmem = slot.gmem
        if gmem is None:
            return False
        index = gfn - slot.base_gfn + slot.gmem_offset
        return gmem.folio_order >= 9 and (index >> 9) not in gmem.small_frames

    def tdx_handle_ept_violation(self, vcpu: "KvmVcpu", gpa: int, eeq: int = 0,
                                 exit_qual: int = EPT_VIOLATION_ACC_WRITE, rip: int = 0) -> int:
        """``tdx_handle_ept_violation``: private GPA → fatal if the guest touched an
        unaccepted page (EEQ PENDING_EPT_VIOLATION and ``exit_qual``, the hardware exit
        qualification, shows no permission; ``kvm_vm_dead``); HP-v3 honours an
        ACCEPT's level; then fault as a write through ``__vmx_handle_ept_violation`` (which
        adds PFERR_PRIVATE_ACCESS), retrying locally while RET_PF_RETRY so the vCPU does not
        re-enter (zero-step).

        Returns the last RET_PF_* value (≥ 0) or a -errno."""
        kvm = vcpu.kvm
        if vcpu.in_guest:
            self._td_exit(vcpu)  # the exit that delivered this violation
        self.stats.ept_violations += 1
        gfn = (gpa >> PAGE_SHIFT) & ~kvm.kvm_gfn_direct_bits()
        if not kvm.kvm_is_addr_direct(gpa):
            if tdx_is_sept_violation_unexpected_pending(eeq, exit_qual):
                # "Guest access before accepting"
                self._kvm_vm_dead(kvm)
                return -EIO
            if eeq & 0xF == EEQ_TYPE_ACCEPT:
                self.stats.accept_exits += 1
            # Private memory is always mapped RWX; a write fault avoids any COW path.
            exit_qual = EPT_VIOLATION_ACC_WRITE
            ret = self.tdx_honor_guest_accept_level(vcpu, gfn, eeq)
            if ret:
                return ret
            local_retry = True
        else:
            if kvm.KVM_BUG_ON(bool(exit_qual & EPT_VIOLATION_ACC_INSTR),
                              "tdx_handle_ept_violation", "instruction fetch from shared GPA"):
                return -EIO
            local_retry = False
        if kvm.tracer is not None and traces(kvm.tracer, KvmPageFaultEvent):
            kvm.tracer(KvmPageFaultEvent(vcpu.vcpu_id, rip, gpa, exit_qual))
        tries = 0
        while True:
            ret = vmx_handle_ept_violation_common(vcpu, gpa, exit_qual)
            if ret != RET_PF_RETRY or not local_retry:
                return ret
            if kvm.vm_dead:
                return -EIO
            # An invalid (being deleted/moved) memslot never faults in: let SRCU go.
            slot = kvm.gfn_to_memslot(gfn)
            if slot is not None and slot.flags & KVM_MEMSLOT_INVALID:
                return ret
            tries += 1
            if tries > self.max_local_retries:
                return ret  # re-enter; the guest faults again
            self.stats.local_retries += 1
            # cond_resched(), still inside the vCPU's SRCU read section.
            kvm.sched.point(RETRY_WAIT, ("vcpu", vcpu.vcpu_id), False)

    def _kvm_vm_dead(self, kvm: "Kvm") -> None:
        """``kvm_vm_dead``."""
        kvm.vm_dead = True
        kvm.kvm_make_all_cpus_request("KVM_REQ_VM_DEAD")

    # =========================================================================== counters
    def counters(self) -> dict[str, object]:
        """Everything a run report needs, flat and deterministic."""
        m = self.module
        kvm = self.kvm
        out: dict[str, object] = {
            f"tdx.{k}": (dict(v) if isinstance(v, Counter) else v)
            for k, v in vars(self.stats).items()}
        out["module.seamcalls"] = dict(sorted(m.seamcalls.items()))
        out["module.results"] = {f"{leaf} {name}": n for (leaf, name), n
                                 in sorted(m.results.items())}
        out["module.track_count"] = m.track_count
        out["module.td_epoch"] = m.td_epoch
        out["module.tlb_flush_count"] = m.tlb_flush_count
        out["module.pages_zeroed"] = m.pages_zeroed
        if kvm is not None:
            out["kvm.mmu_lock.write_acquisitions"] = kvm.mmu_lock.write_acquisitions
            out["kvm.mmu_lock.read_acquisitions"] = kvm.mmu_lock.read_acquisitions
            out["kvm.pages_4k"] = kvm.stat.pages_4k
            out["kvm.pages_2m"] = kvm.stat.pages_2m
            out["kvm.bugs"] = len(kvm.bugs)
        return out


def _short(leaf: str) -> str:
    """"TDH.MEM.RANGE.BLOCK" → "BLOCK", "TDH.PHYMEM.PAGE.WBINVD" → "WBINVD"; the two ADDs
    stay distinct ("SEPT.ADD", "PAGE.ADD")."""
    parts = leaf.split(".")
    return ".".join(parts[-2:]) if parts[-1] == "ADD" else parts[-1]


def create_td(config: VmConfig | None = None, policy: Policy | None = None, *,
              tracer: Callable[[object], None] | None = None, sched=None,
              **module_kwargs: object) -> tuple["Kvm", KvmTdx]:
    """What QEMU does for a TD up to the build phase: KVM_CREATE_VM(KVM_X86_TDX_VM),
    memslot + guest_memfd, KVM_TDX_INIT_VM (TDH.MNG.INIT), KVM_CREATE_VCPU + KVM_TDX_INIT_VCPU.
    The TD is INITIALIZED; add the image with ``tdx_vcpu_init_mem_region`` and finalize."""
    config = config or VmConfig(tdx=True)
    if not config.tdx:
        raise ValueError("create_td needs VmConfig(tdx=True)")
    tdx = KvmTdx(**module_kwargs)
    kvm = create_vm(config, policy, x86_ops=tdx, sched=sched, tracer=tracer)
    tdx.tdx_vm_init(kvm)
    tdx.tdx_td_init(kvm)
    for vcpu in kvm.vcpus:
        tdx.tdx_vcpu_create(vcpu)
    return kvm, tdx


# =================================================================================== guest

@dataclass
class GuestStats:
    """What the guest saw."""

    accepts: Counter = field(default_factory=Counter)  # (size "4K"/"2M"/"1G", status) -> n
    accept_exits: int = 0          # TDCALLs that TD-exited with an EPT violation (re-executed)
    accept_interrupted: int = 0    # 2M accepts re-executed after an interrupt
    busy_retries: int = 0
    size_mismatch_fallbacks: int = 0  # TDX_PAGE_SIZE_MISMATCH → smaller level
    accept_failures: int = 0       # tdx_accept_memory returned false
    mapgpa_calls: int = 0
    mapgpa_chunks: int = 0         # KVM_HC_MAP_GPA_RANGE exits to userspace (≤ 2 MB each)
    touches: int = 0
    ve: int = 0


_SIZE_NAME = {TDX_PS_4K: "4K", TDX_PS_2M: "2M", TDX_PS_1G: "1G"}


@mypyc_attr(allow_interpreted_subclasses=True)  # sim.guest.SimTdGuest
class TdGuest:
    """The TD's guest kernel (Linux ``arch/x86/coco/tdx/tdx-shared.c``, ``tdx.c``): accepts
    memory through TDG.MEM.PAGE.ACCEPT, converts with TDG.VP.VMCALL<MapGPA>, touches pages.

    Each TDCALL needs its vCPU in guest mode; a vCPU kicked out by KVM is re-entered with
    ``tdx_vcpu_run`` first.  An ACCEPT that TD-exits with an EPT violation is handled by
    ``tdx_handle_ept_violation`` and then re-executed, as the module does after re-entry."""

    def __init__(self, kvm: "Kvm", tdx: KvmTdx, vcpu_id: int = 0, *,
                 max_retries: int = 64) -> None:
        self.kvm = kvm
        self.tdx = tdx
        self.vcpu_id = vcpu_id
        self.max_retries = max_retries
        self.stats = GuestStats()

    def _vcpu(self, vcpu_id: Optional[int]) -> "KvmVcpu":
        return self.kvm.vcpus[self.vcpu_id if vcpu_id is None else vcpu_id]

    def enter(self, vcpu_id: Optional[int] = None) -> bool:
        """Get the vCPU into guest mode (re-entering after kicks/exits); False if the VM
        is dead or entry keeps being refused."""
        vcpu = self._vcpu(vcpu_id)
        for _ in range(self.max_retries):
            if vcpu.in_guest:
                return True
            r = self.tdx.tdx_vcpu_run(vcpu)
            if r < 0 or self.kvm.vm_dead:
                return False
        return vcpu.in_guest

    # ----------------------------------------------------------------------------- ACCEPT
    def tdcall_accept(self, gpa: int, tdx_level: int, vcpu_id: Optional[int] = None,
                      rip: Optional[int] = None) -> Optional[int]:
        """One ``__tdcall(TDG_MEM_PAGE_ACCEPT)`` as the guest sees it: the RAX status, or
        None if the VM died (or the retry bound ran out) meanwhile."""
        vcpu = self._vcpu(vcpu_id)
        module = self.tdx.module
        size = _SIZE_NAME.get(tdx_level, str(tdx_level))
        for _ in range(self.max_retries):
            if not self.enter(vcpu.vcpu_id):
                return None
            vcpu.guest_busy = True
            res = module.tdg_mem_page_accept(vcpu.vcpu_id, gpa, tdx_level, rip=rip)
            if res.exit is None:
                kvm_vcpu_insn_end(vcpu)
            else:
                # TD exit; KVM handles it and the TDCALL runs again after re-entry.
                self.tdx._td_exited(vcpu)
                vcpu.guest_busy = False
                self.stats.accept_exits += 1
                ret = self.tdx.tdx_handle_ept_violation(vcpu, res.exit.gpa, res.exit.eeq,
                                                        rip=rip or 0)
                if ret < 0 or self.kvm.vm_dead:
                    return None
                continue
            if res.interrupted:
                self.stats.accept_interrupted += 1
                continue
            if tdx_operand_busy(res.status):
                self.stats.busy_retries += 1
                continue
            self.stats.accepts[(size, status_name(res.status))] += 1
            return res.status
        return None

    def try_accept_one(self, start: int, length: int, tdx_level: int,
                       vcpu_id: Optional[int] = None) -> int:
        """Linux ``try_accept_one``: the accepted size, or 0 (misaligned, too short, or any
        non-zero TDCALL status — including ALREADY_ACCEPTED and PAGE_SIZE_MISMATCH)."""
        accept_size = 1 << (PAGE_SHIFT + 9 * tdx_level)
        if start & (accept_size - 1) or length < accept_size:
            return 0
        status = self.tdcall_accept(start, tdx_level, vcpu_id)
        if status is None or status != TDX_SUCCESS:
            if status is not None and status_code(status) == TDX_PAGE_SIZE_MISMATCH:
                self.stats.size_mismatch_fallbacks += 1
            return 0
        return accept_size

    def accept_memory(self, start: int, end: int, vcpu_id: Optional[int] = None) -> bool:
        """Linux ``tdx_accept_memory(start, end)``: larger accepts first, 1G → 2M → 4K
        (1G always fails on these modules, without a VM exit)."""
        while start < end:
            length = end - start
            size = 0
            for level in (TDX_PS_1G, TDX_PS_2M, TDX_PS_4K):
                size = self.try_accept_one(start, length, level, vcpu_id)
                if size:
                    break
            if not size:
                self.stats.accept_failures += 1
                return False
            start += size
        return True

    # ----------------------------------------------------------------------------- MapGPA
    def map_gpa(self, gpa: int, size: int, shared: bool, vcpu_id: Optional[int] = None) -> int:
        """TDG.VP.VMCALL<MapGPA> → ``tdx_map_gpa``: KVM exits to userspace with
        KVM_HC_MAP_GPA_RANGE 2 MB at a time; the VMM answers each chunk with
        KVM_SET_MEMORY_ATTRIBUTES (``kvm_vm_set_mem_attributes``).  ``gpa`` is given without
        the shared bit.  Returns the TDVMCALL status."""
        kvm = self.kvm
        vcpu = self._vcpu(vcpu_id)
        self.stats.mapgpa_calls += 1
        if gpa & 0xFFF or size & 0xFFF or size <= 0:
            return TDVMCALL_STATUS_ALIGN_ERROR
        shared_gpa_bit = kvm.kvm_gfn_direct_bits() << PAGE_SHIFT
        if kvm.kvm_is_addr_direct(gpa) or (gpa + size - 1) & shared_gpa_bit:
            return TDVMCALL_STATUS_INVALID_OPERAND
        if not self.enter(vcpu.vcpu_id):
            return TDVMCALL_STATUS_INVALID_OPERAND
        self.tdx.tdx_vcpu_exit(vcpu)  # the TDVMCALL is a TD exit
        attrs = 0 if shared else KVM_MEMORY_ATTRIBUTE_PRIVATE
        nxt, end = gpa, gpa + size
        while nxt < end:
            chunk = min(end - nxt, TDX_MAP_GPA_MAX_LEN)
            self.stats.mapgpa_chunks += 1
            try:
                kvm_vm_set_mem_attributes(kvm, nxt >> PAGE_SHIFT, (nxt + chunk) >> PAGE_SHIFT,
                                          attrs)
            except KvmUserError:
                return TDVMCALL_STATUS_INVALID_OPERAND
            nxt += chunk
        return TDVMCALL_STATUS_SUCCESS

    def set_memory_decrypted(self, gpa: int, size: int, vcpu_id: Optional[int] = None) -> bool:
        """``set_memory_decrypted``: private → shared (MapGPA with the shared bit)."""
        return self.map_gpa(gpa, size, True, vcpu_id) == TDVMCALL_STATUS_SUCCESS

    def set_memory_encrypted(self, gpa: int, size: int, vcpu_id: Optional[int] = None) -> bool:
        """``set_memory_encrypted``: shared → private (MapGPA), then accept the range."""
        if self.map_gpa(gpa, size, False, vcpu_id) != TDVMCALL_STATUS_SUCCESS:
            return False
        return self.accept_memory(gpa, gpa + size, vcpu_id)

    # ------------------------------------------------------------------------------ access
    def touch(self, gpa: int, write: bool = False, vcpu_id: Optional[int] = None,
              rip: Optional[int] = None, accept_on_ve: bool = False) -> GuestAccess:
        """A load/store to a private GPA, re-executed after each EPT-violation exit (KVM
        maps the page).  A #VE (pending page, SEPT_VE_DISABLE off) is returned unless
        ``accept_on_ve``: then the guest's #VE handler accepts the 4K page and retries, as
        a non-Linux guest that touches before accepting does."""
        vcpu = self._vcpu(vcpu_id)
        self.stats.touches += 1
        res = GuestAccess(None)
        for _ in range(self.max_retries):
            if not self.enter(vcpu.vcpu_id):
                return res
            vcpu.guest_busy = True
            res = self.tdx.module.guest_access(vcpu.vcpu_id, gpa, write, rip=rip)
            if res.exit is None:
                kvm_vcpu_insn_end(vcpu)
            else:
                self.tdx._td_exited(vcpu)
                vcpu.guest_busy = False
                ret = self.tdx.tdx_handle_ept_violation(vcpu, res.exit.gpa, res.exit.eeq,
                                                        rip=rip or 0)
                if ret < 0 or self.kvm.vm_dead:
                    return res
                continue
            if res.ve:
                self.stats.ve += 1
                if not accept_on_ve:
                    return res
                if self.tdcall_accept(gpa & ~0xFFF, TDX_PS_4K, vcpu.vcpu_id) is None:
                    return res
                continue
            return res
        return res


def run_counters(kvm: "Kvm", tdx: KvmTdx, guest: Optional[TdGuest] = None) -> dict[str, object]:
    """One flat dict of a run's counters: glue, module, KVM and (optionally) the guest."""
    out = tdx.counters()
    if guest is not None:
        for k, v in vars(guest.stats).items():
            out[f"guest.{k}"] = ({f"{a} {b}": n for (a, b), n in sorted(v.items())}
                                 if isinstance(v, Counter) else v)
    return out


__all__ = [
    "EXIT_FASTPATH_EXIT_HANDLED", "EXIT_FASTPATH_NONE", "GuestStats", "KvmTdx",
    "SeamcallRecord", "TD_STATE_INITIALIZED", "TD_STATE_RUNNABLE", "TD_STATE_UNINITIALIZED",
    "TDX_MAP_GPA_MAX_LEN", "TDX_PS_1G", "TDX_PS_2M", "TDX_PS_4K", "TdGuest", "TdxStats",
    "create_td", "pg_level_to_tdx_sept_level", "run_counters",
]
