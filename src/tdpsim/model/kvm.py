"""The VM: ``struct kvm`` / ``struct kvm_arch`` / ``struct kvm_vcpu`` and the
``kvm_x86_ops`` external page-table hooks (``arch/x86/include/asm/kvm_host.h``,
``include/linux/kvm_host.h``, ``virt/kvm/kvm_main.c``).

Everything a run mutates hangs off one ``Kvm`` object: no module-level state, so a run is
a pure function of its inputs.

Simplifications (one line each):
- One address space (as_id 0): SMM is not modelled.
- Every modelled request is KVM_REQUEST_WAIT.  The IPI to a vCPU idle in guest mode is
  handled at once by the vendor (``vcpu_ipi``): VMX exits it, except for a TLB flush whose
  exit, flush and re-entry collapse into a flush in place; TDX exits it for
  KVM_REQ_OUTSIDE_GUEST_MODE and services anything else in place, so TD counters do not
  move.  A vCPU in its entry window or inside a guest
  instruction takes the IPI at its next interrupt window and the requester waits for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Final, Optional

from .native import mypyc_attr
from .events import KvmBug, KvmFlushRemoteTlbs, KvmWarn
from .locking import Rcu, RwLock, SpinLock
from .memslot import KvmMemorySlot, RangeSet
from .mmu_internal import HugepageAdjustStats, KvmMmuPage
from .policy import Policy
from .profile import DEFAULT_PROFILE, KernelProfile
from .sched import BARRIER, VCPU, WAIT_COND, SchedPoints
from .tlb import Tlb
from .spte import (
    KVM_PAGES_PER_HPAGE,
    MTRR_TYPE_WRBACK,
    PAGE_SHIFT,
    gfn_round_for_level,
    VMX_EPT_IPAT_BIT,
    VMX_EPT_MT_EPTE_SHIFT,
    vendor_spte_masks,
)

# VM types (arch/x86/include/uapi/asm/kvm.h).
KVM_X86_DEFAULT_VM: Final = 0
KVM_X86_SW_PROTECTED_VM: Final = 1
KVM_X86_TDX_VM: Final = 5

# Requests (arch/x86/include/asm/kvm_host.h / include/linux/kvm_host.h).
KVM_REQ_TLB_FLUSH = "KVM_REQ_TLB_FLUSH"
KVM_REQ_OUTSIDE_GUEST_MODE = "KVM_REQ_OUTSIDE_GUEST_MODE"
KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS"

OUTSIDE_GUEST_MODE: Final = 0
IN_GUEST_MODE: Final = 1
EXITING_GUEST_MODE: Final = 2

# Host pfns of page-table pages come from here; guest memory lives far above (see
# workloads), so the two never collide.
PT_PFN_BASE: Final = 0x100000


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed outside the compiled build
class PagesByLevel:
    """``union { u64 pages[KVM_NR_PAGE_SIZES]; struct { pages_4k, pages_2m, pages_1g } }``
    of ``struct kvm_vm_stat``: the named views of a ``pages`` list."""

    pages: list[int]

    @property
    def pages_4k(self) -> int:
        return self.pages[0]

    @property
    def pages_2m(self) -> int:
        return self.pages[1]

    @property
    def pages_1g(self) -> int:
        return self.pages[2]


@dataclass
class KvmVmStat(PagesByLevel):
    """``struct kvm_vm_stat`` (the fields the TDP MMU touches)."""

    pages: list[int] = field(default_factory=lambda: [0, 0, 0])
    nx_lpage_splits: int = 0
    remote_tlb_flush: int = 0
    remote_tlb_flush_requests: int = 0


@dataclass
class KvmVcpuStat:
    """``struct kvm_vcpu_stat`` (page-fault counters)."""

    pf_taken: int = 0
    pf_fixed: int = 0
    pf_emulate: int = 0
    pf_spurious: int = 0
    pf_fast: int = 0
    pf_mmio_spte_created: int = 0
    pf_guest: int = 0
    pf_retry: int = 0  # not a kernel stat: RET_PF_RETRY results, for the metrics


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed outside the compiled build
class KvmX86Ops:
    """The ``kvm_x86_ops`` hooks the TDP MMU calls for mirror roots (UPSTREAM API, plus
    HP-v3's ``split_external_spte``) and ``gmem_max_mapping_level``.

    This base class is what a non-TDX VM has: ``gmem_max_mapping_level`` returns 0 (no
    limit) and the external hooks are never reached because there is no mirror root.
    """

    def link_external_spt(self, kvm: "Kvm", gfn: int, level: int, external_spt: int) -> int:
        raise NotImplementedError("link_external_spt on a VM without mirror roots")

    def set_external_spte(self, kvm: "Kvm", gfn: int, level: int, mirror_spte: int) -> int:
        raise NotImplementedError("set_external_spte on a VM without mirror roots")

    def free_external_spt(self, kvm: "Kvm", gfn: int, level: int, external_spt: int) -> int:
        raise NotImplementedError("free_external_spt on a VM without mirror roots")

    def remove_external_spte(self, kvm: "Kvm", gfn: int, level: int, mirror_spte: int) -> None:
        raise NotImplementedError("remove_external_spte on a VM without mirror roots")

    def split_external_spte(self, kvm: "Kvm", gfn: int, level: int, old_spte: int,
                            new_external_spt: int, shared: bool) -> int:
        raise NotImplementedError("split_external_spte on a VM without mirror roots")

    def promote_external_spte(self, kvm: "Kvm", gfn: int, level: int, new_spte: int) -> int:
        """Not in any kernel: the hypothetical ``mirror_promotion="seamcall"`` KVM."""
        raise NotImplementedError("promote_external_spte on a VM without mirror roots")

    def gmem_max_mapping_level(self, kvm: "Kvm", pfn: int, is_private: bool) -> int:
        return 0

    def vcpu_kick_exit(self, vcpu: "KvmVcpu") -> None:
        """The VM exit an IPI forces on a vCPU in guest mode (VMX: nothing more than the
        exit itself)."""
        kvm_vcpu_guest_exited(vcpu)

    def vcpu_ipi(self, vcpu: "KvmVcpu", req: str) -> None:
        """A request's IPI reaches ``vcpu`` idle in guest mode.  VMX: the guest exits (it
        reloads its root etc. on the next entry), except that a TLB flush's exit, flush
        and re-entry collapse into flushing in place."""
        if req == KVM_REQ_TLB_FLUSH:
            _service_in_place(vcpu)
            return
        vcpu.in_guest = False  # taken at once: the vCPU cannot start anything else
        self.vcpu_kick_exit(vcpu)


class RecordingExternalOps(KvmX86Ops):
    """A fake TDX side that accepts every call and records it, for core-model tests.

    ``private_max_level`` plays ``tdx_gmem_max_mapping_level`` (HP-v3: 2M once RUNNABLE).
    ``fail`` maps a hook name to an errno the next calls return (e.g. -EBUSY).
    """

    def __init__(self, private_max_level: int = 2) -> None:
        self.private_max_level = private_max_level
        self.calls: list[tuple] = []
        self.fail: dict[str, int] = {}

    def _record(self, name: str, *args: object) -> int:
        self.calls.append((name, *args))
        return self.fail.get(name, 0)

    def link_external_spt(self, kvm, gfn, level, external_spt):
        return self._record("link_external_spt", gfn, level, external_spt)

    def set_external_spte(self, kvm, gfn, level, mirror_spte):
        return self._record("set_external_spte", gfn, level, mirror_spte)

    def free_external_spt(self, kvm, gfn, level, external_spt):
        return self._record("free_external_spt", gfn, level, external_spt)

    def remove_external_spte(self, kvm, gfn, level, mirror_spte):
        self._record("remove_external_spte", gfn, level, mirror_spte)

    def split_external_spte(self, kvm, gfn, level, old_spte, new_external_spt, shared):
        return self._record("split_external_spte", gfn, level, old_spte, new_external_spt,
                            shared)

    def promote_external_spte(self, kvm, gfn, level, new_spte):
        return self._record("promote_external_spte", gfn, level, new_spte)

    def gmem_max_mapping_level(self, kvm, pfn, is_private):
        return self.private_max_level if is_private else 0


class KernelBUG(Exception):
    """``BUG()``: the kernel would crash the host here.  Engines report it and stop."""

    kind = "KERNEL_BUG"


class MemorySafetyBUG(KernelBUG):
    """What KASAN (use-after-free) or PROVE_RCU (suspicious RCU usage) would report; raised
    only under a scheduling hook, i.e. by the explorer's runs.  ``kind`` names the class."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class KvmVcpu:
    """``struct kvm_vcpu`` with the MMU roots of ``vcpu->arch.mmu``."""

    __slots__ = ("kvm", "vcpu_id", "stat", "root", "mirror_root", "requests", "mode",
                 "pml_buffer", "in_guest", "irqs_disabled", "guest_busy",
                 "ipi_pending", "tlb", "mode_key", "req_key", "exit_key",
                 "entry_cancels", "mmio_gfn", "mmio_gen", "memory_fault")

    def __init__(self, kvm: "Kvm", vcpu_id: int) -> None:
        self.kvm = kvm
        self.vcpu_id = vcpu_id
        self.stat = KvmVcpuStat()
        self.root: Optional[KvmMmuPage] = None
        self.mirror_root: Optional[KvmMmuPage] = None
        self.requests: set[str] = set()
        self.mode = OUTSIDE_GUEST_MODE  # vcpu->mode
        # The CPU side: in VMX non-root / inside the TD; interrupts off from just before
        # IN_GUEST_MODE until after the exit; running a guest instruction the model
        # executes (an IPI waits for its end); an IPI not yet acknowledged.
        self.in_guest = False
        self.irqs_disabled = False
        self.guest_busy = False
        self.ipi_pending = False
        self.tlb = Tlb()
        self.mode_key = ("vcpu", vcpu_id, "mode")
        self.req_key = ("vcpu", vcpu_id, "requests")
        self.exit_key = ("vcpu", vcpu_id, "exit")
        self.entry_cancels = 0  # entries cancelled by kvm_vcpu_exit_request
        self.pml_buffer: list[int] = []  # VMX page-modification log (GPAs)
        # vcpu->arch.mmio_gfn / mmio_gen: the last emulated-MMIO gfn and the memslot
        # generation it was seen under (vcpu_cache_mmio_info; gfn 0 means none).
        self.mmio_gfn = 0
        self.mmio_gen = 0
        # vcpu->run->memory_fault of the last KVM_EXIT_MEMORY_FAULT: (gpa, size, flags)
        self.memory_fault: Optional[tuple[int, int, int]] = None

    def kvm_make_request(self, req: str) -> None:
        self.requests.add(req)

    def exit_done(self) -> bool:
        """No exit of this vCPU is in flight."""
        return not self.irqs_disabled or self.in_guest

    def kvm_ipi_acked(self) -> bool:
        """The requester's wait for this vCPU is over: the IPI was acknowledged, or the
        vCPU is now idle in guest mode (where the IPI takes it out at once)."""
        return not self.ipi_pending or (self.in_guest and not self.guest_busy)

    def kvm_check_request(self, req: str) -> bool:
        if req in self.requests:
            self.requests.discard(req)
            return True
        return False


def _service_in_place(vcpu: KvmVcpu) -> None:
    """Exit, service the request (at least a TLB flush) and re-enter, collapsed."""
    vcpu.ipi_pending = False
    vcpu.mode = IN_GUEST_MODE
    vcpu.tlb.flush()


def kvm_request_pending(vcpu: KvmVcpu) -> bool:
    """``kvm_request_pending``: ``vcpu_enter_guest`` reads ``vcpu->requests`` before
    servicing them — the read that races ``kvm_make_request`` in
    ``kvm_make_all_cpus_request`` (a point on the requests, so the explorer orders the
    two either way)."""
    vcpu.kvm.sched.point(VCPU, vcpu.req_key, False)
    return bool(vcpu.requests)


def kvm_vcpu_enter_guest_mode(vcpu: KvmVcpu) -> bool:
    """The part of ``vcpu_enter_guest`` between servicing requests and the vendor's
    ``vcpu_run``: ``local_irq_disable``, ``smp_store_release(&vcpu->mode, IN_GUEST_MODE)``,
    ``kvm_vcpu_srcu_read_unlock`` + ``smp_mb__after_srcu_read_unlock`` (mode is visible
    before requests are read: pairs with the barrier in ``kvm_make_all_cpus_request``), then
    ``kvm_vcpu_exit_request``.  False when entry is cancelled (mode back to OUTSIDE)."""
    sp = vcpu.kvm.sched
    sp.point(VCPU, vcpu.mode_key, True)
    vcpu.irqs_disabled = True
    vcpu.mode = IN_GUEST_MODE
    sp.point(BARRIER, vcpu.req_key, False)
    if vcpu.mode == EXITING_GUEST_MODE or vcpu.requests:
        vcpu.entry_cancels += 1
        kvm_vcpu_guest_exited(vcpu)
        return False
    return True


def kvm_vcpu_guest_entered(vcpu: KvmVcpu) -> None:
    """VM-entry succeeded: the CPU runs the guest."""
    vcpu.kvm.sched.point(VCPU, vcpu.mode_key, True)
    vcpu.in_guest = True


def kvm_vcpu_guest_exited(vcpu: KvmVcpu) -> None:
    """After a VM exit (or a cancelled entry): ``vcpu->mode = OUTSIDE_GUEST_MODE`` +
    ``smp_wmb``, then ``local_irq_enable`` — where a pending IPI is acknowledged."""
    vcpu.in_guest = False  # the CPU left the guest before anything else happens
    vcpu.kvm.sched.point(VCPU, vcpu.mode_key, True)
    vcpu.mode = OUTSIDE_GUEST_MODE
    vcpu.irqs_disabled = False
    vcpu.ipi_pending = False


def kvm_vcpu_insn_end(vcpu: KvmVcpu) -> None:
    """A guest instruction the model ran has retired: an IPI that arrived meanwhile exits
    the guest now (the instruction boundary is the interrupt window)."""
    vcpu.kvm.sched.point(VCPU, vcpu.mode_key, True)
    if vcpu.ipi_pending and vcpu.in_guest:
        vcpu.in_guest = False
        vcpu.kvm.x86_ops.vcpu_kick_exit(vcpu)
    vcpu.guest_busy = False


def kvm_vcpu_wait_exit_done(vcpu: KvmVcpu) -> None:
    """Before entering again: an exit forced by an IPI may still be in flight on this
    vCPU (interrupts still off); the CPU finishes it first."""
    sp = vcpu.kvm.sched
    while vcpu.irqs_disabled and not vcpu.in_guest:
        if sp.hook is None:
            raise RuntimeError("vCPU entry while its exit is in flight in a sequential run")
        sp.point(WAIT_COND, vcpu.exit_key, False)


def _no_srcu_readers() -> None:
    """``synchronize_srcu_expedited`` with no reader in a read-side section."""


class Kvm:
    """``struct kvm`` + ``struct kvm_arch``: one VM or TD."""

    def __init__(self, *, vm_type: int = KVM_X86_DEFAULT_VM, policy: Policy | None = None,
                 nr_vcpus: int = 1, root_level: int = 4,
                 x86_ops: KvmX86Ops | None = None, sched: SchedPoints | None = None,
                 tracer: Callable[[object], None] | None = None,
                 profile: KernelProfile = DEFAULT_PROFILE, vendor: str = "intel",
                 host_maxphyaddr: int = 52) -> None:
        if root_level not in (4, 5):
            raise ValueError("root_level must be 4 or 5 (TDP walk length)")
        if vm_type == KVM_X86_TDX_VM and vendor != "intel":
            raise ValueError("a TD needs the intel vendor (TDX runs on VMX with EPT)")
        if vm_type == KVM_X86_TDX_VM and not profile.tdx_vm_type:
            # KVM_CREATE_VM: kvm_is_vm_type_supported() fails, -EINVAL.
            raise ValueError(f"kernel {profile.name} has no KVM_X86_TDX_VM (TDX host "
                             "support landed in v6.16)")
        if vm_type == KVM_X86_SW_PROTECTED_VM and not profile.KVM_X86_SW_PROTECTED_VM:
            raise ValueError(f"KVM_CREATE_VM: KVM_X86_SW_PROTECTED_VM is -EINVAL on "
                             f"{profile.name} (added in v6.8)")
        self.vm_type = vm_type
        # kvm_arch_init_vm(): software-protected VMs and TDs have private memory; TDs may
        # only pre-fault once finalized (tdx_td_finalize sets pre_fault_allowed).
        self.has_private_mem = vm_type in (KVM_X86_SW_PROTECTED_VM, KVM_X86_TDX_VM)
        self.pre_fault_allowed = vm_type in (KVM_X86_DEFAULT_VM, KVM_X86_SW_PROTECTED_VM)
        self.disable_nx_huge_pages = False  # KVM_CAP_VM_DISABLE_NX_HUGE_PAGES
        self.disabled_quirks = 0  # kvm->arch.disabled_quirks (KVM_CAP_DISABLE_QUIRKS2)
        self.nx_huge_page_last = 0  # jiffies (ms here) of the last recovery run
        self.manual_dirty_log_protect = 0  # KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 flags
        self.nr_memslots_dirty_logging = 0
        self.resched_checks = 0  # need_resched() polls, for Policy.resched_every
        self.policy = policy or Policy()
        # The kernel generation this VM runs under: every version-dependent decision.
        self.profile = profile
        # The vendor module's SPTE format (kvm_intel: EPT, kvm_amd: NPT), set at load.
        self.vendor = vendor
        self.masks = vendor_spte_masks(vendor, profile)
        self.root_level = root_level
        # kvm_host.maxphyaddr: KVM never installs SPTEs for gfns above it (kvm_mmu_max_gfn).
        self.host_maxphyaddr = host_maxphyaddr
        self.sched = sched or SchedPoints()
        self.tracer = tracer
        self.x86_ops = x86_ops or KvmX86Ops()
        self.mmu_lock = RwLock("mmu_lock", self.sched)
        self.mmu_lock.lockdep_report = lambda msg: self.WARN_ON_ONCE(True, "lockdep", msg)
        self.tdp_mmu_pages_lock = SpinLock("tdp_mmu_pages_lock", self.sched)
        self.rcu = Rcu(self.sched)
        self.tdp_mmu_roots: list[KvmMmuPage] = []
        self.tdp_mmu_pages = 0
        # One list per enum kvm_mmu_type (shadow, TDP MMU); see mmu.possible_nx_huge_pages.
        self.possible_nx_huge_pages: list[list[KvmMmuPage]] = [[], []]
        self.stat = KvmVmStat()
        # Not in the kernel: what disallowed_hugepage_adjust decided (the metrics), and an
        # audit hook that sees each fault's decisions (``tdpsim equiv``; None: off).
        self.hugepage_adjust = HugepageAdjustStats()
        self.audit: Callable[[tuple], None] | None = None
        self.memslots: list[KvmMemorySlot] = []          # sorted by base_gfn (gfn_tree)
        self.memslot_id_hash: dict[int, KvmMemorySlot] = {}   # by id (id_hash)
        self.memslots_generation = 0
        # synchronize_srcu_expedited(&kvm->srcu) after each memslot swap: the sequential
        # model holds no SRCU reader across an ioctl, so it returns at once; the explorer
        # installs its SRCU (OpContext), whose readers are the vCPUs handling faults.
        self.synchronize_srcu_expedited: Callable[[], None] = _no_srcu_readers
        self.mem_attr_private = RangeSet()
        self.mmu_invalidate_seq = 0
        self.mmu_invalidate_in_progress = 0
        self.mmu_invalidate_range_start = 0
        self.mmu_invalidate_range_end = 0
        self.mn_active_invalidate_count = 0  # notifier start() seen without its end()
        self.vm_bugged = False
        self.vm_dead = False
        self.bugs: list[KvmBug] = []
        self.warnings: list[KvmWarn] = []
        # How often each KVM_BUG_ON / WARN fired; the lists above keep the first of each.
        self.bug_counts: dict[tuple[str, str], int] = {}
        self.sp_by_pfn: dict[int, KvmMmuPage] = {}
        self.next_pt_pfn = PT_PFN_BASE
        # Frames of freed page tables, reused LIFO by alloc_pt_pfn when pt_frame_reuse is on
        # (the explorer turns it on; sequential runs keep fresh pfns so traces stay stable).
        self.pt_frame_reuse = False
        self.free_pt_pfns: list[int] = []
        self.vcpus = [KvmVcpu(self, i) for i in range(nr_vcpus)]
        if self.kvm_has_mirrored_tdp():
            # tdx_vm_init(): MMIO SPTEs get value 0 so the access reaches the TD as #VE;
            # TDs disable KVM_X86_QUIRK_IGNORE_GUEST_PAT, so no IPAT in the memtype.
            self.shadow_mmio_value = 0
            self.mt_mask = MTRR_TYPE_WRBACK << VMX_EPT_MT_EPTE_SHIFT
            # The shared bit as a gfn bit: GPA bit 47 (4-level) or 51 (5-level).
            self.gfn_direct_bits = 1 << ((47 if root_level == 4 else 51) - PAGE_SHIFT)
        else:
            self.shadow_mmio_value = self.masks.shadow_mmio_value
            # vmx_get_mt_mask: WB with IPAT for normal RAM; SVM has no get_mt_mask hook.
            self.mt_mask = ((MTRR_TYPE_WRBACK << VMX_EPT_MT_EPTE_SHIFT) | VMX_EPT_IPAT_BIT
                            if vendor == "intel" else 0)
            self.gfn_direct_bits = 0

    # --- predicates -------------------------------------------------------------------

    def kvm_has_mirrored_tdp(self) -> bool:
        return self.vm_type == KVM_X86_TDX_VM

    def kvm_arch_has_private_mem(self) -> bool:
        """``kvm_arch_has_private_mem``: ``kvm->arch.has_private_mem``."""
        return self.has_private_mem

    def kvm_gfn_direct_bits(self) -> int:
        return self.gfn_direct_bits

    def kvm_is_addr_direct(self, gpa: int) -> bool:
        """True if the VM has no direct bits or the shared bit is set."""
        bits = self.gfn_direct_bits << PAGE_SHIFT
        return not bits or bool(gpa & bits)

    def kvm_gfn_root_bits(self, root: KvmMmuPage) -> int:
        """Mirror roots index by the private gfn; direct roots by the aliased shared gfn."""
        return 0 if root.role.is_mirror else self.gfn_direct_bits

    def is_nx_huge_page_enabled(self) -> bool:
        """``is_nx_huge_page_enabled``: the module parameter, unless this VM disabled the
        workaround with KVM_CAP_VM_DISABLE_NX_HUGE_PAGES."""
        return self.policy.nx_huge_pages and not self.disable_nx_huge_pages

    def kvm_ad_enabled(self) -> bool:
        return self.policy.ad_enabled

    def kvm_mem_is_private(self, gfn: int) -> bool:
        """``kvm_mem_is_private``: only VMs with private memory can have the attribute."""
        return self.mem_attr_private.contains(gfn)

    def gfn_to_memslot(self, gfn: int) -> Optional[KvmMemorySlot]:
        for slot in self.memslots:
            if slot.contains(gfn):
                return slot
        return None

    # --- page-table page allocator ----------------------------------------------------

    def alloc_pt_pfn(self) -> int:
        if self.free_pt_pfns:
            return self.free_pt_pfns.pop()
        pfn = self.next_pt_pfn
        self.next_pt_pfn += 1
        return pfn

    # --- bugs, tracing, TLB -----------------------------------------------------------

    def KVM_BUG_ON(self, cond: bool, function: str, message: str) -> bool:
        """``KVM_BUG_ON(cond, kvm)``: on true, mark the VM bugged (``kvm_vm_bugged``) and
        record why; returns the condition so callers bail out as the kernel does."""
        if cond:
            bug = KvmBug(function, message)
            if self._count((function, message)):
                self.bugs.append(bug)
            self.vm_bugged = True
            self.vm_dead = True
            for vcpu in self.vcpus:
                vcpu.kvm_make_request("KVM_REQ_VM_DEAD")
            if self.tracer is not None:
                self.tracer(bug)
        return cond

    def _count(self, key: tuple[str, str]) -> bool:
        """Count one firing; True the first time (the kernel prints a splat only once)."""
        n = self.bug_counts.get(key, 0)
        self.bug_counts[key] = n + 1
        return n == 0

    def WARN_ON_ONCE(self, cond: bool, function: str, message: str) -> bool:
        """``WARN_ON_ONCE(cond)``: recorded, never fatal; returns the condition as the
        kernel macro does."""
        if cond:
            warn = KvmWarn(function, message)
            if self._count(("WARN " + function, message)):
                self.warnings.append(warn)
            if self.tracer is not None:
                self.tracer(warn)
        return cond

    def kvm_make_all_cpus_request(self, req: str) -> bool:
        """``kvm_make_all_cpus_request``: set ``req`` on every vCPU (not for the no-action
        KVM_REQ_OUTSIDE_GUEST_MODE), ``kvm_request_needs_ipi`` (``smp_mb__before_atomic`` +
        ``cmpxchg(mode, IN_GUEST_MODE, EXITING_GUEST_MODE)``; WAIT: IPI unless
        OUTSIDE_GUEST_MODE), then IPI and wait for each acknowledgement.  Returns whether
        any vCPU was IPI'd."""
        sp = self.sched
        waits = []
        for vcpu in self.vcpus:
            if req != KVM_REQ_OUTSIDE_GUEST_MODE:
                sp.point(VCPU, vcpu.req_key, True)
                vcpu.kvm_make_request(req)
            sp.point(BARRIER, vcpu.mode_key, True)
            if vcpu.mode == OUTSIDE_GUEST_MODE:
                continue
            waits.append(vcpu)
            if vcpu.in_guest and not vcpu.guest_busy:
                self._ipi_idle_guest(vcpu, req)
            else:
                vcpu.mode = EXITING_GUEST_MODE
                vcpu.ipi_pending = True
        for vcpu in waits:
            while vcpu.ipi_pending:
                if vcpu.in_guest and not vcpu.guest_busy:
                    self._ipi_idle_guest(vcpu, req)
                    break
                if sp.hook is None:
                    raise RuntimeError("kvm_make_all_cpus_request: a sequential run would "
                                       "wait forever for an IPI acknowledgement")
                sp.point(WAIT_COND, vcpu.mode_key, False)
        return bool(waits)

    def _ipi_idle_guest(self, vcpu: KvmVcpu, req: str) -> None:
        """The IPI reaches a vCPU running the guest: what follows is the vendor's."""
        self.x86_ops.vcpu_ipi(vcpu, req)

    def kvm_flush_remote_tlbs(self, gfn: int = 0, nr_pages: int = 0) -> None:
        """``kvm_flush_remote_tlbs``; ``_range``/``_gfn``/``_memslot`` degrade to it on
        hosts without a ranged-flush hook (bare-metal VMX)."""
        self.stat.remote_tlb_flush_requests += 1
        if self.kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH):
            self.stat.remote_tlb_flush += 1
        if self.tracer is not None:
            self.tracer(KvmFlushRemoteTlbs(gfn, nr_pages))

    def kvm_flush_remote_tlbs_gfn(self, gfn: int, level: int) -> None:
        self.kvm_flush_remote_tlbs(gfn_round_for_level(gfn, level), KVM_PAGES_PER_HPAGE(level))

    def kvm_flush_remote_tlbs_memslot(self, slot: KvmMemorySlot) -> None:
        self.kvm_flush_remote_tlbs(slot.base_gfn, slot.npages)

    def kvm_update_page_stats(self, level: int, count: int) -> None:
        """``kvm_update_page_stats``: ``stat.pages[level - 1] += count``."""
        self.stat.pages[level - 1] += count
