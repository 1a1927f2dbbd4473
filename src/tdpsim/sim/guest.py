"""Guest drivers: what the guest (and its VMM) does, expressed as calls of the model's API.

Not a kernel file.  ``TdDriver`` plays a TD's firmware and kernel on top of ``KvmTdx`` and
the module's ``TdGuest`` (TDG.MEM.PAGE.ACCEPT with Linux's 1G→2M→4K fallback, MapGPA,
loads/stores); ``VmDriver`` plays a plain VM, whose "accept" is first-touch zeroing.  Both
offer the same operations, so the engine's phases do not care which one runs.

Modelled guest behaviour (and where it comes from):
- EDK2/TDVF accepts the memory it uses page by page at 4K, all on the BSP (vCPU 0)
  [reference tdx-module §8, ML-2710].
- Linux keeps a bitmap of unaccepted 2 MB units and accepts a unit when the page
  allocator first needs it (``accept_memory`` → ``tdx_accept_memory``: 1G, then 2M, then
  4K); the EFI stub accepts the unaligned head/tail of unaccepted ranges at once
  (``process_unaccepted_memory``), which ``complete_partial`` models.
- A plain VM has nothing to accept: the first write zeroes the page and faults it in; if
  KVM mapped the first page of a 2 MB unit huge, the other 511 pages never exit, so they
  are not simulated one by one.

The guest keeps its own view of what it has accepted (``accepted``), exactly like Linux's
bitmap; the model's S-EPT remains the authority on what is mapped.
"""

from __future__ import annotations

from typing import Callable, Optional

from tdpsim.model import spte as S
from tdpsim.model.kvm import Kvm
from tdpsim.model.kvm_main import (
    kvm_gmem_punch_hole,
    kvm_mmu_slot_apply_flags,
    kvm_recover_nx_huge_pages,
)
from tdpsim.model.memslot import KVM_LPAGE_GUEST_INHIBIT_FLAG, KVM_MEM_LOG_DIRTY_PAGES
from tdpsim.model.vmx import (
    EPT_VIOLATION_ACC_INSTR,
    EPT_VIOLATION_ACC_READ,
    EPT_VIOLATION_ACC_WRITE,
    EPT_VIOLATION_PROT_EXEC,
    EPT_VIOLATION_PROT_READ,
    ept_exit_qualification,
    handle_ept_violation,
)
from tdpsim.model.mmu_internal import RET_PF_RETRY
from tdpsim.model.policy import Policy
from tdpsim.model.tdp_iter import spte_to_child_sp
from tdpsim.model.tdx import (
    TDX_PS_4K,
    KvmTdx,
    TdGuest,
    create_td,
)
from tdpsim.model.profile import DEFAULT_PROFILE, KernelProfile
from tdpsim.model.vmm import VmConfig, create_vm

from .workload import PAGE, VmSpec

UNIT = 2 << 20            # Linux's unaccepted-memory unit (PMD_SIZE)
UNIT_PAGES = UNIT // PAGE


class GuestError(RuntimeError):
    """The guest could not proceed (the VM died or was bugged)."""


def mapped_level(kvm: Kvm, root, gfn: int, write: bool, exec: bool) -> int:
    """Level of the leaf in ``root`` that lets this access through without an EPT
    violation, 0 if the access would exit (what the CPU's page walk decides)."""
    sp, level = root, root.role.level
    bits = kvm.kvm_gfn_root_bits(root)
    while True:
        spte = sp.spt[S.SPTE_INDEX(gfn | bits, level)]
        if not S.is_shadow_present_pte(spte):
            return 0
        if S.is_last_spte(spte, level):
            if write and not S.is_writable_pte(spte):
                return 0
            if exec and not S.is_executable_pte(kvm.masks, spte):
                return 0
            return level
        sp, level = spte_to_child_sp(kvm, spte), level - 1


class _Accepted:
    """The guest's record of accepted memory: whole 2 MB units plus per-page leftovers."""

    def __init__(self) -> None:
        self.units: set[int] = set()
        self.partial: dict[int, set[int]] = {}

    def is_accepted(self, gfn: int) -> bool:
        u = gfn // UNIT_PAGES
        return u in self.units or gfn % UNIT_PAGES in self.partial.get(u, ())

    def unit_state(self, unit: int) -> str:
        if unit in self.units:
            return "full"
        return "partial" if self.partial.get(unit) else "none"

    def add(self, gfn: int, npages: int) -> None:
        end = gfn + npages
        while gfn < end:
            u, off = divmod(gfn, UNIT_PAGES)
            n = min(UNIT_PAGES - off, end - gfn)
            if n == UNIT_PAGES:
                self.units.add(u)
                self.partial.pop(u, None)
            else:
                s = self.partial.setdefault(u, set())
                s.update(range(off, off + n))
                if len(s) == UNIT_PAGES:
                    self.units.add(u)
                    del self.partial[u]
            gfn += n

    def remove(self, gfn: int, npages: int) -> None:
        end = gfn + npages
        while gfn < end:
            u, off = divmod(gfn, UNIT_PAGES)
            n = min(UNIT_PAGES - off, end - gfn)
            if u in self.units:
                self.units.discard(u)
                if n < UNIT_PAGES:
                    self.partial[u] = set(range(UNIT_PAGES)) - set(range(off, off + n))
            elif u in self.partial:
                self.partial[u] -= set(range(off, off + n))
                if not self.partial[u]:
                    del self.partial[u]
            gfn += n


class SimTdGuest(TdGuest):
    """``TdGuest`` that also counts Yan Zhao's "4K accept where 2M possible" event the way
    it was measured (RFC v1, before GUEST_INHIBIT existed; <aFvBNromdrkEtPp6@…>): every
    4K ACCEPT that TD-exits — per exit, so a page converted back to private and accepted
    again counts again — in a 2 MB frame whose maximum mapping level is 2M: lpage_info
    clear apart from GUEST_INHIBIT (so no MIXED attributes), TDX allows 2M, guest_memfd
    holds a 2M folio.  Build-time (PAGE.ADD) 4K leaves in the frame do not matter, as they
    do not for the mapping level KVM computes: Yan's 0x806–0x9ff (506 pages) sits in the
    frame whose first 6 pages are TDVF's SEC page tables."""

    def __init__(self, kvm: Kvm, tdx: KvmTdx, build_frames: set[int], **kw) -> None:
        super().__init__(kvm, tdx, **kw)
        self.build_frames = build_frames
        self.accept_4k_where_2m_possible = 0
        self.accept_4k_exits = 0
        self.accept_2m_exits = 0

    def tdcall_accept(self, gpa: int, tdx_level: int, vcpu_id: Optional[int] = None,
                      rip: Optional[int] = None) -> Optional[int]:
        before = self.stats.accept_exits
        status = super().tdcall_accept(gpa, tdx_level, vcpu_id, rip)
        exits = self.stats.accept_exits - before
        if exits:
            if tdx_level == TDX_PS_4K:
                self.accept_4k_exits += exits
                if self._could_map_2m(gpa >> 12):
                    self.accept_4k_where_2m_possible += exits
            else:
                self.accept_2m_exits += exits
        return status

    def _could_map_2m(self, gfn: int) -> bool:
        kvm = self.kvm
        slot = kvm.gfn_to_memslot(gfn)
        if slot is None or slot.gmem is None:
            return False
        if slot.disallow_lpage(gfn, S.PG_LEVEL_2M) & ~KVM_LPAGE_GUEST_INHIBIT_FLAG:
            return False
        if self.tdx.tdx_gmem_max_mapping_level(kvm, 0, True) < S.PG_LEVEL_2M:
            return False
        index = gfn - slot.base_gfn + slot.gmem_offset
        return slot.gmem.folio_order >= 9 and (index >> 9) not in slot.gmem.small_frames


class Driver:
    """Operations common to both kinds of guest; counters the metrics read."""

    tdx: Optional[KvmTdx] = None
    guest: Optional[SimTdGuest] = None

    def __init__(self, kvm: Kvm) -> None:
        self.kvm = kvm
        self.accepted = _Accepted()
        self.ept_violations = 0        # exits the guest caused (VM: faults taken)
        self.accesses = 0
        self.errors = 0                # operations that failed (VM dead/bugged)
        self.nx_recovered = 0
        self.nx_recovery_runs = 0

    # ------------------------------------------------------------------ shared helpers
    @property
    def slot(self):
        return self.kvm.memslots[0]

    def check(self) -> None:
        if self.kvm.vm_dead or self.kvm.vm_bugged:
            raise GuestError(self.kvm.bugs[0].message if self.kvm.bugs else "VM dead")

    def nx_recovery(self, ratio: int) -> int:
        """One wake-up of the NX recovery worker (``kvm_nx_huge_page_recovery_worker``)."""
        self.nx_recovery_runs += 1
        n = kvm_recover_nx_huge_pages(self.kvm, ratio)
        self.nx_recovered += n
        return n

    def unaccepted_units(self, start_gfn: int, end_gfn: int) -> list[int]:
        """2 MB units wholly inside [start, end) that the guest has not touched at all."""
        first = -(-start_gfn // UNIT_PAGES)
        last = end_gfn // UNIT_PAGES
        return [u for u in range(first, last) if self.accepted.unit_state(u) == "none"]

    def unit_is_private(self, unit: int) -> bool:
        """Memory the guest's page allocator may hand out: on a TD only private units (the
        ones it converted to shared are in use, e.g. swiotlb)."""
        if self.tdx is None:
            return True
        g = unit * UNIT_PAGES
        return self.kvm.mem_attr_private.covers(g, g + UNIT_PAGES)

    def partial_units(self) -> list[int]:
        return sorted(self.accepted.partial)


class TdDriver(Driver):
    """A TD: TDX glue + module + the guest kernel's TDCALLs/TDVMCALLs."""

    def __init__(self, vm: VmSpec, policy: Policy, tracer: Optional[Callable] = None,
                 profile: KernelProfile = DEFAULT_PROFILE) -> None:
        config = VmConfig(tdx=True, nr_vcpus=vm.vcpus, mem_bytes=vm.memory_bytes,
                          host_page_level=vm.host_page_level,
                          gmem_folio_order=vm.gmem_folio_order, profile=profile)
        self.touch_first = vm.guest == "touch-first"
        kvm, tdx = create_td(config, policy, tracer=tracer,
                             sept_ve_disable=not self.touch_first)
        super().__init__(kvm)
        self.tdx = tdx
        tdx.record = False  # the per-SEAMCALL log would grow with the run; counters suffice
        self.build_frames: set[int] = set()
        self.guest = SimTdGuest(kvm, tdx, self.build_frames)
        self.shared_bit = kvm.kvm_gfn_direct_bits() << 12

    # ------------------------------------------------------------------ build
    def build(self, start: int, size: int) -> None:
        """KVM_TDX_INIT_MEM_REGION of one section: PAGE.ADD 4K pages on vCPU 0 (MAPPED,
        no accept needed)."""
        gfn = start // PAGE
        npages = size // PAGE
        r = self.tdx.tdx_vcpu_init_mem_region(self.kvm.vcpus[0], start, npages)
        if r:
            self.check()
            raise GuestError(f"KVM_TDX_INIT_MEM_REGION failed: {r}")
        self.build_frames.update(range(gfn >> 9, ((gfn + npages - 1) >> 9) + 1))
        self.accepted.add(gfn, npages)

    def finalize(self) -> None:
        if self.tdx.tdx_td_finalize(self.kvm):
            self.check()
            raise GuestError("KVM_TDX_FINALIZE_VM failed")

    # ------------------------------------------------------------------ accept
    def accept_4k(self, vcpu: int, gfn: int) -> None:
        """One TDG.MEM.PAGE.ACCEPT at 4K (EDK2 style); already-accepted pages are skipped
        by the guest's own bookkeeping, as EDK2's page allocator does."""
        if self.accepted.is_accepted(gfn):
            return
        before = self.guest.stats.accept_exits
        status = self.guest.tdcall_accept(gfn << 12, TDX_PS_4K, vcpu)
        self.ept_violations += self.guest.stats.accept_exits - before
        if status is None:
            self.errors += 1
            self.check()
            raise GuestError("ACCEPT did not complete")
        self.accepted.add(gfn, 1)

    def accept_range(self, vcpu: int, gfn: int, npages: int) -> None:
        """Linux ``accept_memory`` of [gfn, gfn + npages): 1G → 2M → 4K fallback."""
        before = self.guest.stats.accept_exits
        ok = self.guest.accept_memory(gfn << 12, (gfn + npages) << 12, vcpu)
        self.ept_violations += self.guest.stats.accept_exits - before
        if not ok:
            self.errors += 1
            self.check()
            raise GuestError(f"accept_memory({gfn << 12:#x}, +{npages} pages) failed")
        self.accepted.add(gfn, npages)

    def accept_unit(self, vcpu: int, unit: int) -> None:
        """Linux's lazy accept of one 2 MB unit of the unaccepted bitmap."""
        gfn = unit * UNIT_PAGES
        partial = self.accepted.partial.get(unit)
        if unit in self.accepted.units:
            return
        if not partial:
            self.accept_range(vcpu, gfn, UNIT_PAGES)
            return
        # Accept the holes only (EFI stub: accept around what firmware already accepted).
        off = 0
        while off < UNIT_PAGES:
            if off in partial:
                off += 1
                continue
            end = off
            while end < UNIT_PAGES and end not in partial:
                end += 1
            self.accept_range(vcpu, gfn + off, end - off)
            off = end

    # ------------------------------------------------------------------ access
    def access(self, vcpu: int, gpa: int, write: bool, exec: bool = False,
               shared: bool = False) -> None:
        """A load/store/fetch.  Private memory must be accepted first (the guest kernel
        accepts its unit lazily, as the page allocator would); shared memory faults on
        the direct root."""
        self.accesses += 1
        gfn = gpa >> 12
        kvm = self.kvm
        if shared:
            v = kvm.vcpus[vcpu]
            if mapped_level(kvm, v.root, gfn, write, False):
                return
            self.ept_violations += 1
            qual = (EPT_VIOLATION_ACC_WRITE if write else EPT_VIOLATION_ACC_READ) | \
                (EPT_VIOLATION_ACC_INSTR if exec else 0)
            for _ in range(8):
                if not self.guest.enter(vcpu):
                    break
                r = self.tdx.tdx_handle_ept_violation(v, gpa | self.shared_bit,
                                                      exit_qual=qual)
                if r != RET_PF_RETRY or kvm.vm_dead:
                    break
            self.check()
            return
        first = self.touch_first and not self.accepted.is_accepted(gfn)
        if not self.accepted.is_accepted(gfn) and not first:
            self.accept_unit(vcpu, gfn // UNIT_PAGES)
        before = self.tdx.stats.ept_violations
        res = self.guest.touch(gpa, write, vcpu, accept_on_ve=first)
        if first and res.pfn is not None:
            self.accepted.add(gfn, 1)
        self.ept_violations += self.tdx.stats.ept_violations - before
        if res.pfn is None:
            self.errors += 1
            self.check()

    # ------------------------------------------------------------------ conversion
    def to_shared(self, vcpu: int, gfn: int, npages: int, discard: bool) -> None:
        """``set_memory_decrypted``: MapGPA(shared); with ``discard`` the VMM also punches
        the private backing (QEMU's discard on conversion)."""
        if not self.guest.set_memory_decrypted(gfn << 12, npages << 12, vcpu):
            self.errors += 1
            self.check()
            raise GuestError("MapGPA to shared failed")
        self.accepted.remove(gfn, npages)
        if discard:
            kvm_gmem_punch_hole(self.kvm, self.slot, gfn, gfn + npages)
        self.check()

    def to_private(self, vcpu: int, gfn: int, npages: int) -> None:
        """``set_memory_encrypted``: MapGPA(private), then accept the range; a touch-first
        guest only converts and leaves the accept to its #VE handler."""
        if self.touch_first:
            if self.guest.map_gpa(gfn << 12, npages << 12, False, vcpu) != 0:
                self.check()
                raise GuestError("MapGPA to private failed")
            return
        before = self.guest.stats.accept_exits
        ok = self.guest.set_memory_encrypted(gfn << 12, npages << 12, vcpu)
        self.ept_violations += self.guest.stats.accept_exits - before
        if not ok:
            self.errors += 1
            self.check()
            raise GuestError("MapGPA to private / accept failed")
        self.accepted.add(gfn, npages)

    def is_private(self, gfn: int) -> bool:
        return self.kvm.kvm_mem_is_private(gfn)

    def punch_hole(self, gfn: int, npages: int) -> None:
        kvm_gmem_punch_hole(self.kvm, self.slot, gfn, gfn + npages)
        self.check()


class VmDriver(Driver):
    """A plain VM: every access that the EPT does not allow is one EPT violation →
    ``handle_ept_violation`` (which traces ``kvm_page_fault``)."""

    def __init__(self, vm: VmSpec, policy: Policy, tracer: Optional[Callable] = None,
                 profile: KernelProfile = DEFAULT_PROFILE) -> None:
        config = VmConfig(tdx=False, nr_vcpus=vm.vcpus, mem_bytes=vm.memory_bytes,
                          host_page_level=vm.host_page_level, profile=profile)
        super().__init__(create_vm(config, policy, tracer=tracer))

    def fault(self, vcpu: int, gfn: int, write: bool, exec: bool) -> bool:
        """Touch one page: returns whether it ended up mapped at ≥ 2M (so the rest of its
        2 MB unit needs no simulation)."""
        kvm = self.kvm
        v = kvm.vcpus[vcpu]
        for _ in range(8):
            lvl = mapped_level(kvm, v.root, gfn, write, exec)
            if lvl:
                return lvl >= S.PG_LEVEL_2M
            self.ept_violations += 1
            # The CPU reports what the existing translation allows; KVM only derives
            # PFERR_PRESENT_MASK from it, so any R bit of a mapped page will do.
            prot = EPT_VIOLATION_PROT_READ | EPT_VIOLATION_PROT_EXEC \
                if mapped_level(kvm, v.root, gfn, False, False) > 0 else 0
            r = handle_ept_violation(v, gfn << 12,
                                     ept_exit_qualification(write=write, exec=exec, prot=prot))
            if r < 0:
                self.errors += 1
                self.check()
                return False
        self.check()
        return False

    def touch_range(self, vcpu: int, gfn: int, npages: int) -> None:
        """First-touch zeroing of a range: fault where KVM has to, skip pages a huge
        mapping already covers."""
        end = gfn + npages
        while gfn < end:
            huge = self.fault(vcpu, gfn, True, False)
            if huge:
                gfn = min(end, (gfn | (UNIT_PAGES - 1)) + 1)
            else:
                gfn += 1

    def accept_4k(self, vcpu: int, gfn: int) -> None:
        if not self.accepted.is_accepted(gfn):
            self.fault(vcpu, gfn, True, False)
            self.accepted.add(gfn, 1)

    def accept_range(self, vcpu: int, gfn: int, npages: int) -> None:
        self.touch_range(vcpu, gfn, npages)
        self.accepted.add(gfn, npages)

    def accept_unit(self, vcpu: int, unit: int) -> None:
        if unit not in self.accepted.units:
            self.accept_range(vcpu, unit * UNIT_PAGES, UNIT_PAGES)

    def access(self, vcpu: int, gpa: int, write: bool, exec: bool = False,
               shared: bool = False) -> None:
        self.accesses += 1
        self.fault(vcpu, gpa >> 12, write, exec)
        self.accepted.add(gpa >> 12, 1) if not self.accepted.is_accepted(gpa >> 12) else None

    def set_dirty_log(self, enable: bool) -> None:
        """``KVM_SET_USER_MEMORY_REGION2`` flags-only change of the RAM slot."""
        flags = self.slot.flags
        new = flags | KVM_MEM_LOG_DIRTY_PAGES if enable else flags & ~KVM_MEM_LOG_DIRTY_PAGES
        if new != flags:
            kvm_mmu_slot_apply_flags(self.kvm, self.slot, new)
        self.check()


def make_driver(vm: VmSpec, policy: Policy, tracer: Optional[Callable] = None,
                profile: KernelProfile = DEFAULT_PROFILE) -> Driver:
    return (TdDriver if vm.tdx else VmDriver)(vm, policy, tracer, profile)
