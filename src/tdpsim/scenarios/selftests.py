"""KVM's own selftests as model scenarios: the same steps, the same asserts.

* :func:`nx_huge_pages_test` — ``tools/testing/selftests/kvm/x86_64/nx_huge_pages_test.c``
  (run by its ``.sh`` wrapper: ``nx_huge_pages=1``, recovery ratio 1, period 100 ms):
  read, read, execute, execute, read, wait for recovery, read; after each step the VM's
  ``pages_2m`` and ``nx_lpage_splits`` are checked.  ``disable_nx_huge_pages`` is the
  run with ``KVM_CAP_VM_DISABLE_NX_HUGE_PAGES``.
* :func:`dirty_log_page_splitting_test` — ``x86_64/dirty_log_page_splitting_test.c``:
  populate, enable dirty logging, two dirty passes (GET, plus CLEAR with
  ``manual_caps``), disable, repopulate; the asserts on ``pages_4k/2m/1g``.
* :func:`set_memory_region_test` — ``set_memory_region_test.c`` (6.12) on x86: KVM_RUN
  without memslots, invalid memslot flags, KVM_CAP_NR_MEMSLOTS slots and one more, and
  MOVE / DELETE of the region a running vCPU reads, with the slot-zap quirk and without:
  the ioctls' return codes, the guest's and ``vcpu_worker``'s asserts, the exit reasons;
  each VM's events (by selftest thread) are kept for comparison with the kernel's trace.
* :func:`pre_fault_memory_test` — ``pre_fault_memory_test.c`` (6.12), default VM:
  KVM_PRE_FAULT_MEMORY of 2M, of 2 pages (one past the slot: -ENOENT) and of the page
  past the slot, with the selftest's per-call and per-range asserts, then the guest's
  reads (no NPF left).
* :func:`private_mem_kvm_exits_test` — ``x86_64/private_mem_kvm_exits_test.c`` (6.12,
  KVM_X86_SW_PROTECTED_VM): a private page whose guest_memfd slot is deleted, and one
  in a plain slot: KVM_RUN -EFAULT with KVM_EXIT_MEMORY_FAULT (flags, gpa, size).

Each returns :class:`SelftestRun`: every assert as a :class:`Check` (what the selftest
compares, both sides).  Runs on a kvm_amd VM (NPT, the TDP MMU) as on the oracle.

Simplifications: the selftests' slot 0 (code, stack, page tables) is not modelled (one
stand-in page in ``set_memory_region_test``); the kernel's passing runs show it
contributes no huge pages to the counts compared.  The
vCPUs of the page-splitting test run one after the other; the recovery worker runs once
where the selftest sleeps (ratio 1 zaps everything in one run).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Collection, Optional, Union

from ..model.kvm import KVM_X86_DEFAULT_VM, KVM_X86_SW_PROTECTED_VM, Kvm
from ..model.kvm_main import (KVM_USER_MEM_SLOTS, KVM_X86_QUIRK_SLOT_ZAP_ALL,
                              KvmUserspaceMemoryRegion2, kvm_mmu_slot_apply_flags,
                              kvm_recover_nx_huge_pages, kvm_set_memory_region,
                              kvm_vm_ioctl_set_memory_region)
from ..model.memslot import (KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
                             KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEMSLOT_INVALID, GuestMemfd,
                             HostBacking, KvmMemorySlot)
from ..model.mmu_fault import KVM_MEMORY_EXIT_FLAG_PRIVATE, kvm_mmu_load, kvm_mmu_reload
from ..model.mmu_internal import EFAULT, EINTR, EINVAL, ENOENT, RET_PF_EMULATE, RET_PF_RETRY
from ..model.policy import Policy
from ..model.profile import DEFAULT_PROFILE, KernelProfile
from ..model.spte import PAGE_SHIFT, PG_LEVEL_2M, PG_LEVEL_4K
from ..model.svm import npf_error_code, npf_interception, npt_access, npt_access_outcome
from ..model.dirty_log import (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_INITIALLY_SET,
                               KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, kvm_dirty_bitmap_bytes)
from ..model.ioctl import (KVM_CAP_DISABLE_QUIRKS2, KvmPreFaultMemory,
                           kvm_vcpu_pre_fault_memory, kvm_vm_ioctl_clear_dirty_log,
                           kvm_vm_ioctl_enable_cap, kvm_vm_ioctl_get_dirty_log,
                           kvm_vm_ioctl_set_mem_attributes)

__all__ = ["Check", "SelftestRun", "nx_huge_pages_test", "dirty_log_page_splitting_test",
           "set_memory_region_test", "pre_fault_memory_test", "private_mem_kvm_exits_test"]

MiB = 1 << 20
PAGE_2M = 2 * MiB


@dataclass(frozen=True)
class Check:
    """One ``TEST_ASSERT``: ``left <op> right`` at ``stage`` (``in``: one of a tuple)."""

    stage: str
    what: str
    left: int
    right: Union[int, tuple[int, ...]]
    op: str = "=="

    @property
    def ok(self) -> bool:
        if self.op == "in":
            return self.left in self.right
        return self.left == self.right if self.op == "==" else self.left >= self.right

    def __str__(self) -> str:
        return f"{self.stage}: {self.what}: {self.left} {self.op} {self.right}" + (
            "" if self.ok else "  FAILED")


@dataclass
class SelftestRun:
    name: str
    checks: list[Check] = field(default_factory=list)
    #: per VM, the model's events with the selftest thread ("main", "vcpu") causing them
    events: dict[str, list[tuple[str, object]]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[str]:
        return [str(c) for c in self.checks if not c.ok]


def _vm(profile: KernelProfile, policy: Policy) -> Kvm:
    kvm = Kvm(policy=policy, profile=profile, vendor="amd")
    kvm_mmu_load(kvm.vcpus[0])
    return kvm


def _slot(kvm: Kvm, sid: int, gpa: int, size: int, hva: int, level: int) -> KvmMemorySlot:
    slot = KvmMemorySlot(sid, gpa >> PAGE_SHIFT, size >> PAGE_SHIFT, hva,
                         HostBacking(hva, size, level))
    kvm_set_memory_region(kvm, slot)
    return slot


# --- nx_huge_pages_test ------------------------------------------------------------------

HPAGE_GPA = 4 << 30              # HPAGE_GPA: 4G prevents collision with slot 0
HPAGE_SLOT = 10


def nx_huge_pages_test(profile: KernelProfile = DEFAULT_PROFILE,
                       disable_nx_huge_pages: bool = False) -> SelftestRun:
    """``run_test(reclaim_period_ms, disable_nx_huge_pages, reboot_permissions=true)``:
    three hugetlb 2M pages at 4G mapped by the guest with 4K pages (TDP)."""
    kvm = _vm(profile, Policy(nx_huge_pages=not disable_nx_huge_pages))
    vcpu = kvm.vcpus[0]
    _slot(kvm, HPAGE_SLOT, HPAGE_GPA, 3 * PAGE_2M, 0x7F00_0000_0000, PG_LEVEL_2M)
    hpage = [HPAGE_GPA + i * PAGE_2M for i in range(3)]
    run = SelftestRun("nx_huge_pages_test" + ("(disable_nx_huge_pages)" if disable_nx_huge_pages else ""))
    dis = disable_nx_huge_pages

    def check(stage: str, pages_2m: int, splits: int) -> None:
        run.checks.append(Check(stage, "check_2m_page_count", kvm.stat.pages[PG_LEVEL_2M - 1],
                                pages_2m))
        run.checks.append(Check(stage, "check_split_count", kvm.stat.nx_lpage_splits, splits))

    check("start", 0, 0)
    npt_access(vcpu, hpage[0], "read")
    check("GUEST_SYNC(1): read hpage_1", 1, 0)
    npt_access(vcpu, hpage[1], "read")
    check("GUEST_SYNC(2): read hpage_2", 2, 0)
    npt_access(vcpu, hpage[0], "exec")
    check("GUEST_SYNC(3): call hpage_1", 2 if dis else 1, 0 if dis else 1)
    npt_access(vcpu, hpage[2], "exec")
    check("GUEST_SYNC(4): call hpage_3", 3 if dis else 1, 0 if dis else 2)
    npt_access(vcpu, hpage[0], "read")
    check("GUEST_SYNC(5): read hpage_1", 3 if dis else 1, 0 if dis else 2)
    if kvm.is_nx_huge_page_enabled():
        kvm_recover_nx_huge_pages(kvm, ratio=1)         # nx_huge_pages_recovery_ratio=1
    check("after wait_for_reclaim", 3 if dis else 1, 0)
    npt_access(vcpu, hpage[2], "read")
    check("GUEST_SYNC(6): read hpage_3", 3 if dis else 2, 0)
    return run


# --- dirty_log_page_splitting_test -------------------------------------------------------

VCPUS, SLOTS, ITERATIONS = 2, 2, 2
MEMSTRESS_GPA = 1 << 32          # the test region's base (above slot 0)


def _stats(kvm: Kvm) -> dict[str, int]:
    p = kvm.stat.pages
    return {"pages_4k": p[0], "pages_2m": p[1], "pages_1g": p[2], "hugepages": p[1] + p[2]}


def _get_and_clear_dirty_log(kvm: Kvm, slot: KvmMemorySlot, manual_caps: bool) -> None:
    """``memstress_get_dirty_log`` (KVM_GET_DIRTY_LOG) and, with manual protect,
    ``memstress_clear_dirty_log`` (KVM_CLEAR_DIRTY_LOG of everything GET returned)."""
    bitmap = bytearray(kvm_dirty_bitmap_bytes(slot))
    assert kvm_vm_ioctl_get_dirty_log(kvm, slot.id, bitmap) == 0
    if manual_caps:
        assert kvm_vm_ioctl_clear_dirty_log(kvm, slot.id, 0, slot.npages, bitmap) == 0


def dirty_log_page_splitting_test(profile: KernelProfile = DEFAULT_PROFILE, *,
                                  manual_caps: bool = False,
                                  per_vcpu_bytes: int = 8 * MiB) -> SelftestRun:
    """``run_test``: memstress memory (``VCPUS * per_vcpu_bytes``, ``SLOTS`` slots,
    THP-backed: ``-s anonymous_thp``) written by every vCPU in every iteration."""
    kvm = _vm(profile, Policy(eager_page_split=True))
    if manual_caps:
        assert kvm_vm_ioctl_enable_cap(kvm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                                       KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
                                       | KVM_DIRTY_LOG_INITIALLY_SET) == 0
    vcpu = kvm.vcpus[0]
    total = VCPUS * per_vcpu_bytes
    per_slot = total // SLOTS
    slots = [_slot(kvm, 1 + i, MEMSTRESS_GPA + i * per_slot, per_slot,
                   0x7E00_0000_0000 + i * per_slot, PG_LEVEL_2M) for i in range(SLOTS)]
    host_num_pages = total >> PAGE_SHIFT
    name = "dirty_log_page_splitting_test" + ("(MANUAL_PROTECT2)" if manual_caps else "")
    run = SelftestRun(name)

    def iteration() -> None:
        for gpa in range(MEMSTRESS_GPA, MEMSTRESS_GPA + total, 1 << PAGE_SHIFT):
            npt_access(vcpu, gpa, "write")

    iteration()
    populated = _stats(kvm)
    for s in slots:
        kvm_mmu_slot_apply_flags(kvm, s, s.flags | KVM_MEM_LOG_DIRTY_PAGES)
    enabled = _stats(kvm)
    clear_pass = []
    for _ in range(ITERATIONS):
        iteration()
        for s in slots:
            _get_and_clear_dirty_log(kvm, s, manual_caps)
        if manual_caps:
            clear_pass.append(_stats(kvm))
    for s in slots:
        kvm_mmu_slot_apply_flags(kvm, s, s.flags & ~KVM_MEM_LOG_DIRTY_PAGES)
    iteration()
    repopulated = _stats(kvm)

    run.checks.append(Check("populating memory", "pages_2m * 512 + pages_1g * 512 * 512",
                            populated["pages_2m"] * 512 + populated["pages_1g"] * 512 * 512,
                            host_num_pages))
    if manual_caps:
        run.checks.append(Check("clearing dirty log", "hugepages", clear_pass[0]["hugepages"], 0))
        run.checks.append(Check("clearing dirty log", "pages_4k", clear_pass[0]["pages_4k"],
                                host_num_pages, ">="))
        run.checks.append(Check("enabling dirty logging", "hugepages", enabled["hugepages"],
                                populated["hugepages"]))
    else:
        run.checks.append(Check("enabling dirty logging", "hugepages", enabled["hugepages"], 0))
        run.checks.append(Check("enabling dirty logging", "pages_4k", enabled["pages_4k"],
                                host_num_pages, ">="))
    run.checks.append(Check("repopulating memory", "pages_2m", repopulated["pages_2m"],
                            populated["pages_2m"]))
    run.checks.append(Check("repopulating memory", "pages_1g", repopulated["pages_1g"],
                            populated["pages_1g"]))
    return run



# --- set_memory_region_test --------------------------------------------------------------

MEM_REGION_SIZE = 0x200000       # one 2M page: the region starts as exactly one huge page
MEM_REGION_GPA = 0xC0000000
MEM_REGION_SLOT = 10
MMIO_VAL = 0xBEEF
KVM_EXIT_SHUTDOWN, KVM_EXIT_INTERNAL_ERROR = 8, 17
#: the selftest's slot 0 (code, stack, page tables; not modelled beyond its existence):
#: its size and where the guest's page tables sit in it
SLOT0_SIZE, SLOT0_PT_GPA = 2 * MiB, 0x180000
SLOT0_HVA, REGION_HVA = 0x7D00_0000_0000, 0x7D40_0000_0000


class _RegionVm:
    """``spawn_vm``: one vCPU, slot 0 and the THP-backed test region at 3G whose two
    first pages the host zeroed (so THP-populated), and the host memory the guest reads
    (8-byte words by hva; anything unwritten reads 0)."""

    def __init__(self, run: SelftestRun, profile: KernelProfile, segment: str,
                 disable_slot_zap_quirk: bool) -> None:
        self.run, self.segment = run, segment
        # the model's events with the selftest thread that causes them (see vcpu_thread)
        self.events: list[tuple[str, object]] = []
        self.thread = "main"
        self.kvm = Kvm(policy=Policy(), profile=profile, vendor="amd",
                       tracer=lambda e: self.events.append((self.thread, e)))
        self.vcpu = self.kvm.vcpus[0]
        self.mem: dict[int, int] = {}
        self.region_hva = REGION_HVA
        assert self.set_region(0, 0, SLOT0_SIZE, SLOT0_HVA, PG_LEVEL_4K) == 0
        assert self.set_region(MEM_REGION_SLOT, MEM_REGION_GPA, MEM_REGION_SIZE,
                               self.region_hva, PG_LEVEL_2M) == 0
        if disable_slot_zap_quirk:
            assert kvm_vm_ioctl_enable_cap(self.kvm, KVM_CAP_DISABLE_QUIRKS2,
                                           KVM_X86_QUIRK_SLOT_ZAP_ALL) == 0
        run.events[segment] = self.events
        # The guest runs from slot 0: the model's stand-in for its code, stack and page
        # tables is one page, which gives the root the tables those need.
        assert not self.cpu_access(SLOT0_PT_GPA)

    def set_region(self, slot: int, gpa: int, size: int, hva: int, level: int,
                   unpopulated: bool = False) -> int:
        """KVM_SET_USER_MEMORY_REGION2 with a fresh anonymous mapping at *hva*; a vCPU
        access while the old slot is INVALID must retry (kvm_faultin_pfn)."""
        backing = HostBacking(hva, size, level,
                              unpopulated_frames={hva >> 21} if unpopulated else set())
        mem = KvmUserspaceMemoryRegion2(slot, 0, gpa, size, hva, backing=backing)
        return kvm_vm_ioctl_set_memory_region(self.kvm, mem, while_invalid=self.fault_in_window)

    @contextmanager
    def vcpu_thread(self):
        """What the vCPU thread does (its events are kept apart from the main thread's)."""
        self.thread = "vcpu"
        try:
            yield
        finally:
            self.thread = "main"

    def fault_in_window(self) -> None:
        with self.vcpu_thread():
            kvm_mmu_reload(self.vcpu)
            r = npf_interception(self.vcpu, MEM_REGION_GPA, npf_error_code())
        self.run.checks.append(Check(self.segment, "fault on a KVM_MEMSLOT_INVALID slot "
                                     "(RET_PF_RETRY: the guest does not die)", r, RET_PF_RETRY))

    def cpu_access(self, gpa: int, guest_page: bool = False) -> bool:
        """The vCPU enters (``kvm_mmu_reload``) and reads *gpa*; True if KVM emulates it."""
        with self.vcpu_thread():
            kvm_mmu_reload(self.vcpu)
            return npt_access_outcome(self.vcpu, gpa, "read", guest_page)[1] == RET_PF_EMULATE

    def guest_read(self, gpa: int) -> int:
        """One guest load: the memory word, or ``vcpu_worker``'s answer to the
        KVM_EXIT_MMIO (with its asserts)."""
        if self.cpu_access(gpa):
            self.run.checks.append(Check(self.segment, "vcpu_worker: run->mmio.phys_addr",
                                         gpa, MEM_REGION_GPA))
            return MMIO_VAL
        slot = self.kvm.gfn_to_memslot(gpa >> PAGE_SHIFT)
        return self.mem.get(slot.gfn_to_hva(gpa >> PAGE_SHIFT) + (gpa & 0xFFF), 0)

    def guest_spin_on_val(self, spin_val: int) -> int:
        """``guest_spin_on_val``: load until the value changes (the model loads once: the
        host changed nothing in between when it loads again)."""
        return self.guest_read(MEM_REGION_GPA)

    def check_in(self, what: str, val: int, allowed: tuple[int, ...]) -> None:
        self.run.checks.append(Check(self.segment, what, val, allowed, "in"))

    def move(self, gpa: int) -> int:
        return kvm_vm_ioctl_set_memory_region(self.kvm, KvmUserspaceMemoryRegion2(
            MEM_REGION_SLOT, 0, gpa, MEM_REGION_SIZE, self.region_hva),
            while_invalid=self.fault_in_window)

    def delete(self, slot: int, while_invalid: Optional[Callable[[], None]] = None) -> int:
        return kvm_vm_ioctl_set_memory_region(self.kvm, KvmUserspaceMemoryRegion2(
            slot, 0, MEM_REGION_GPA if slot else 0, 0, 0),
            while_invalid=self.fault_in_window if slot else while_invalid)


def _test_move_memory_region(run: SelftestRun, profile: KernelProfile, segment: str,
                             quirk_off: bool, late: bool) -> None:
    vm = _RegionVm(run, profile, segment, quirk_off)
    if not late:
        assert vm.guest_spin_on_val(0) == 0       # spawn_vm: the guest spins on 0
    hva = vm.region_hva
    assert vm.move(MEM_REGION_GPA - 4096) == 0
    vm.mem[hva] = 2
    # misaligned: the gpa now reads the region's second page, never the 2
    run.checks.append(Check(segment, "misaligned move: the guest does not see 2",
                            vm.guest_spin_on_val(0), 0))
    vm.mem[hva] = 1
    assert vm.move(MEM_REGION_GPA) == 0
    val = vm.guest_spin_on_val(0)
    vm.check_in("guest: val == 1 || val == MMIO_VAL", val, (1, MMIO_VAL))
    vm.check_in("guest: val == 1 || val == 0", vm.guest_spin_on_val(MMIO_VAL), (1, 0))
    vm.check_in("guest: val == 1 || val == MMIO_VAL", vm.guest_spin_on_val(0), (1, MMIO_VAL))
    run.checks.append(Check(segment, "guest: GUEST_ASSERT_EQ(val, 1)",
                            vm.guest_spin_on_val(MMIO_VAL), 1))


def _test_delete_memory_region(run: SelftestRun, profile: KernelProfile, segment: str,
                               quirk_off: bool, dies_in_window: bool) -> None:
    vm = _RegionVm(run, profile, segment, quirk_off)
    assert vm.guest_spin_on_val(0) == 0
    assert vm.delete(MEM_REGION_SLOT) == 0
    run.checks.append(Check(segment, "guest: GUEST_ASSERT_EQ(val, MMIO_VAL)",
                            vm.guest_spin_on_val(0), MMIO_VAL))
    # vm_userspace_mem_region_add: a fresh THP mapping nobody wrote (reads: zero page)
    vm.region_hva += 2 * MEM_REGION_SIZE
    assert vm.set_region(MEM_REGION_SLOT, MEM_REGION_GPA, MEM_REGION_SIZE, vm.region_hva,
                         PG_LEVEL_2M, unpopulated=True) == 0
    run.checks.append(Check(segment, "guest: GUEST_ASSERT_EQ(val, 0)",
                            vm.guest_spin_on_val(MMIO_VAL), 0))
    assert vm.delete(MEM_REGION_SLOT) == 0
    run.checks.append(Check(segment, "guest: GUEST_ASSERT_EQ(val, MMIO_VAL)",
                            vm.guest_spin_on_val(0), MMIO_VAL))
    vm.guest_read(MEM_REGION_GPA)            # spin indefinitely (until slot 0 goes)
    if dies_in_window:
        # The vCPU is emulating its MMIO load when slot 0 turns INVALID: the emulator's
        # walk of the guest page tables (in slot 0) reads no memory (an INVALID slot has
        # no hva), injects #PF into the zeroed IDT: triple fault.
        died = []
        assert vm.delete(0, lambda: died.append(vm.kvm.gfn_to_memslot(
            SLOT0_PT_GPA >> PAGE_SHIFT).flags & KVM_MEMSLOT_INVALID)) == 0
        exit_reason = KVM_EXIT_SHUTDOWN if died == [KVM_MEMSLOT_INVALID] else 0
    else:
        assert vm.delete(0) == 0
        # Its next instruction needs its page tables, which were in slot 0: the walk's
        # access is emulated, the emulator's own walk finds no memory: triple fault.
        exit_reason = KVM_EXIT_SHUTDOWN if vm.cpu_access(SLOT0_PT_GPA, guest_page=True) \
            and vm.kvm.gfn_to_memslot(SLOT0_PT_GPA >> PAGE_SHIFT) is None else 0
    vm.check_in("run->exit_reason == KVM_EXIT_SHUTDOWN || KVM_EXIT_INTERNAL_ERROR",
                exit_reason, (KVM_EXIT_SHUTDOWN, KVM_EXIT_INTERNAL_ERROR))


def _test_zero_memory_regions(run: SelftestRun, profile: KernelProfile) -> None:
    """A VM without memslots: the reset vector's fetch becomes an MMIO SPTE and
    RET_PF_EMULATE, and the emulator has no instruction bytes to decode
    (handle_emulation_failure: KVM_EXIT_INTERNAL_ERROR)."""
    events: list[tuple[str, object]] = []
    kvm = Kvm(policy=Policy(), profile=profile, vendor="amd",
              tracer=lambda e: events.append(("main", e)))
    run.events["zero_memory_regions"] = events     # KVM_RUN on the main thread
    vcpu = kvm.vcpus[0]
    kvm_mmu_reload(vcpu)
    emulated = npt_access_outcome(vcpu, RESET_VECTOR, "exec")[1] == RET_PF_EMULATE
    exit_reason = KVM_EXIT_INTERNAL_ERROR if emulated and kvm.gfn_to_memslot(
        RESET_VECTOR >> PAGE_SHIFT) is None else 0
    run.checks.append(Check("test_zero_memory_regions", "TEST_ASSERT_KVM_EXIT_REASON",
                            exit_reason, KVM_EXIT_INTERNAL_ERROR))


RESET_VECTOR = 0xFFFFFFF0


def _test_invalid_memory_region_flags(run: SelftestRun, profile: KernelProfile,
                                      sw_protected_vm: bool,
                                      memory_attributes_private: bool) -> None:
    stage = "test_invalid_memory_region_flags"
    vm_type = KVM_X86_SW_PROTECTED_VM if sw_protected_vm else KVM_X86_DEFAULT_VM
    kvm = Kvm(vm_type=vm_type, profile=profile, vendor="amd")
    supported = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY
    v2_only = KVM_MEM_GUEST_MEMFD
    if memory_attributes_private:          # KVM_CAP_MEMORY_ATTRIBUTES on /dev/kvm
        supported |= KVM_MEM_GUEST_MEMFD

    def set_region(flags: int, v1: bool, gmem: Optional[GuestMemfd] = None) -> int:
        return kvm_vm_ioctl_set_memory_region(kvm, KvmUserspaceMemoryRegion2(
            0, flags, 0, MEM_REGION_SIZE, 0, guest_memfd=gmem), v1=v1)

    for i in range(32):
        flag = 1 << i
        if supported & flag and not v2_only & flag:
            continue
        run.checks.append(Check(stage, f"KVM_SET_USER_MEMORY_REGION flags {flag:#x}",
                                set_region(flag, True), -EINVAL))
        if supported & flag:
            continue
        run.checks.append(Check(stage, f"KVM_SET_USER_MEMORY_REGION2 flags {flag:#x}",
                                set_region(flag, False), -EINVAL))
    if supported & KVM_MEM_GUEST_MEMFD:
        gmem = GuestMemfd(MEM_REGION_SIZE >> PAGE_SHIFT, pfn_base=0x100000)
        for other in (KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY):
            run.checks.append(Check(stage, f"REGION2 GUEST_MEMFD | {other:#x}",
                                    set_region(KVM_MEM_GUEST_MEMFD | other, False, gmem),
                                    -EINVAL))


def _test_add_max_memory_regions(run: SelftestRun, profile: KernelProfile) -> None:
    stage = "test_add_max_memory_regions"
    max_mem_slots = KVM_USER_MEM_SLOTS             # KVM_CAP_NR_MEMSLOTS
    run.checks.append(Check(stage, "KVM_CAP_NR_MEMSLOTS > 0", max_mem_slots, 1, ">="))
    kvm = Kvm(profile=profile, vendor="amd")
    hva = 0x7C00_0000_0000
    backing = HostBacking(hva, max_mem_slots * MEM_REGION_SIZE, PG_LEVEL_4K)
    added = sum(kvm_vm_ioctl_set_memory_region(kvm, KvmUserspaceMemoryRegion2(
        slot, 0, slot * MEM_REGION_SIZE, MEM_REGION_SIZE, hva + slot * MEM_REGION_SIZE,
        backing=backing)) == 0 for slot in range(max_mem_slots))
    run.checks.append(Check(stage, "slots 0..max-1 added", added, max_mem_slots))
    extra = HostBacking(0x7BF0_0000_0000, MEM_REGION_SIZE)
    r = kvm_vm_ioctl_set_memory_region(kvm, KvmUserspaceMemoryRegion2(
        max_mem_slots, 0, max_mem_slots * MEM_REGION_SIZE, MEM_REGION_SIZE, extra.hva,
        backing=extra))
    run.checks.append(Check(stage, "one more memory slot: -EINVAL", r, -EINVAL))


def set_memory_region_test(profile: KernelProfile = DEFAULT_PROFILE, *, loops: int = 10,
                           sw_protected_vm: bool = False,
                           memory_attributes_private: bool = True,
                           max_memslots: bool = True,
                           late_first_load: Collection[str] = (),
                           dies_in_slot0_window: Collection[str] = ()) -> SelftestRun:
    """``main()`` of ``set_memory_region_test.c`` on x86 (KVM_CAP_DISABLE_QUIRKS2 offers
    KVM_X86_QUIRK_SLOT_ZAP_ALL, so MOVE and DELETE run with the quirk and without).
    The defaults are the recorded kernel's config (Debian 6.12: no
    KVM_X86_SW_PROTECTED_VM, KVM_GENERIC_MEMORY_ATTRIBUTES=y); ``max_memslots=False``
    skips the 32764-slot subtest.  ``run.events`` holds each VM's model events by
    thread, the VMs named ``zero_memory_regions``, ``move[quirk]#i``, ``delete[quirk]#i``,
    ``move[noquirk]#i``...; in the MOVE VMs named in ``late_first_load`` the guest's
    first load comes after the first move (its vCPU had not re-entered the guest within
    ``spawn_vm``'s 100 ms wait), and in the DELETE VMs named in ``dies_in_slot0_window``
    the vCPU dies while slot 0 is INVALID, before its zap: timings the selftest allows.

    Not modelled (one line each): KVM_SET_NR_MMU_PAGES (it limits shadow pages only);
    the guest_memfd subtests (``test_add_private_memory_region``,
    ``test_add_overlapping_private_memory_regions``) need KVM_X86_SW_PROTECTED_VM, which
    the recorded kernel skips, and kvm_gmem_bind's file/VM identity checks; the guest's
    RIP after the final exit (checked only for KVM_EXIT_INTERNAL_ERROR)."""
    run = SelftestRun("set_memory_region_test")
    _test_zero_memory_regions(run, profile)
    _test_invalid_memory_region_flags(run, profile, sw_protected_vm, memory_attributes_private)
    if max_memslots:
        _test_add_max_memory_regions(run, profile)
    for quirk_off in (False, True):
        tag = "noquirk" if quirk_off else "quirk"
        for i in range(loops):
            name = f"move[{tag}]#{i}"
            _test_move_memory_region(run, profile, name, quirk_off, name in late_first_load)
        for i in range(loops):
            name = f"delete[{tag}]#{i}"
            _test_delete_memory_region(run, profile, name, quirk_off,
                                       name in dies_in_slot0_window)
    return run


# --- pre_fault_memory_test ---------------------------------------------------------------

TEST_NPAGES = (PAGE_2M >> PAGE_SHIFT) + 1       # TEST_SIZE = SZ_2M + PAGE_SIZE
PRE_FAULT_TEST_SLOT = 10
#: vm->max_gfn of the recorded guest (AMD, 40 PA bits: below the HyperTransport hole)
AMD_40BIT_MAX_GFN = 0xFCFFFFF


def pre_fault_test_gpa(max_gfn: int) -> int:
    """``guest_test_phys_mem``: the top of guest memory, 2M-aligned down."""
    return ((max_gfn - TEST_NPAGES) << PAGE_SHIFT) & -PAGE_2M


def pre_fault_memory_test(profile: KernelProfile = DEFAULT_PROFILE, *,
                          max_gfn: int = AMD_40BIT_MAX_GFN) -> SelftestRun:
    """``pre_fault_memory_test.c`` (6.12) for ``vm_type`` 0 (the recorded kernel skips
    KVM_X86_SW_PROTECTED_VM: not built in): an anonymous slot of 2M + 4K at the top of
    guest memory, nobody has touched (so every read maps the zero page), pre-faulted in
    three ranges, then read by the guest.  ``run.events["vm"]``: the model's events.

    Not modelled: the guest's page tables and code (slot 0; the guest's reads of the
    test pages are modelled, its walks are not)."""
    run = SelftestRun("pre_fault_memory_test")
    events: list[tuple[str, object]] = []
    run.events["vm"] = events
    kvm = Kvm(policy=Policy(), profile=profile, vendor="amd",
              tracer=lambda e: events.append(("main", e)))
    vcpu = kvm.vcpus[0]
    gpa = pre_fault_test_gpa(max_gfn)
    size = TEST_NPAGES << PAGE_SHIFT
    hva = 0x7E80_0000_1000                       # an mmap without THP alignment
    backing = HostBacking(hva, size, PG_LEVEL_4K,
                          unpopulated_frames={f for f in range(hva >> 21, (hva + size >> 21) + 1)})
    assert kvm_vm_ioctl_set_memory_region(kvm, KvmUserspaceMemoryRegion2(
        PRE_FAULT_TEST_SLOT, 0, gpa, size, hva, backing=backing)) == 0

    def pre_fault_memory(start: int, length: int, left: int) -> None:
        rng = KvmPreFaultMemory(start, length)
        stage = f"pre_fault_memory({start - gpa:#x}, {length:#x})"
        while True:
            prev = rng.size
            ret = kvm_vcpu_pre_fault_memory(vcpu, rng)
            run.checks.append(Check(stage, "(range.size < prev) ^ (ret < 0)",
                                    int((rng.size < prev) ^ (ret < 0)), 1))
            if not (rng.size if ret >= 0 else ret == -EINTR):
                break
        run.checks.append(Check(stage, "range.size == left", rng.size, left))
        run.checks.append(Check(stage, "ret" if not left else "ret == -ENOENT",
                                ret, 0 if not left else -ENOENT))

    pre_fault_memory(gpa, PAGE_2M, 0)
    pre_fault_memory(gpa + PAGE_2M, 2 << PAGE_SHIFT, 1 << PAGE_SHIFT)
    pre_fault_memory(gpa + size, 1 << PAGE_SHIFT, 1 << PAGE_SHIFT)
    # guest_code: one read per page, then GUEST_DONE (KVM_EXIT_IO): nothing left to fault
    kvm_mmu_reload(vcpu)
    faults = sum(npt_access(vcpu, gpa + (i << PAGE_SHIFT), "read") for i in range(TEST_NPAGES))
    run.checks.append(Check("vcpu_run", "NPFs on the pre-faulted pages", faults, 0))
    return run


# --- x86_64/private_mem_kvm_exits_test ------------------------------------------------------

EXITS_TEST_GPA = 0xC0000000
EXITS_TEST_SIZE = 1 << PAGE_SHIFT
EXITS_TEST_SLOT = 10
KVM_EXIT_MEMORY_FAULT = 39


def _private_access(run: SelftestRun, profile: KernelProfile, stage: str,
                    guest_memfd: bool, read_before_delete: bool = False) -> None:
    """A KVM_X86_SW_PROTECTED_VM whose guest reads EXITS_TEST_GPA, made private with
    KVM_SET_MEMORY_ATTRIBUTES; with ``guest_memfd`` the slot is a guest_memfd slot that
    the main thread deletes while the guest reads, else a plain slot (nothing can back
    the private page).  Either way KVM_RUN ends in KVM_EXIT_MEMORY_FAULT for the page."""
    events: list[tuple[str, object]] = []
    run.events[stage] = events
    kvm = Kvm(vm_type=KVM_X86_SW_PROTECTED_VM, policy=Policy(), profile=profile,
              vendor="amd", tracer=lambda e: events.append((thread[0], e)))
    thread = ["main"]
    vcpu = kvm.vcpus[0]
    hva = 0x7E90_0000_0000
    flags = KVM_MEM_GUEST_MEMFD if guest_memfd else 0
    gmem = GuestMemfd(1, pfn_base=0x200000) if guest_memfd else None
    assert kvm_vm_ioctl_set_memory_region(kvm, KvmUserspaceMemoryRegion2(
        EXITS_TEST_SLOT, flags, EXITS_TEST_GPA, EXITS_TEST_SIZE, hva, guest_memfd=gmem,
        backing=HostBacking(hva, EXITS_TEST_SIZE))) == 0
    assert kvm_vm_ioctl_set_mem_attributes(kvm, EXITS_TEST_GPA, EXITS_TEST_SIZE,
                                           KVM_MEMORY_ATTRIBUTE_PRIVATE) == 0

    def guest_repeatedly_read() -> int:
        thread[0] = "vcpu"
        kvm_mmu_reload(vcpu)
        r = npt_access_outcome(vcpu, EXITS_TEST_GPA, "read")[1]
        thread[0] = "main"
        return r

    if guest_memfd:
        if read_before_delete:
            assert guest_repeatedly_read() == 0    # the private page maps; the guest spins
        assert kvm_vm_ioctl_set_memory_region(kvm, KvmUserspaceMemoryRegion2(
            EXITS_TEST_SLOT, 0, EXITS_TEST_GPA, 0, 0)) == 0
    r = guest_repeatedly_read()
    run.checks.append(Check(stage, "KVM_RUN: -EFAULT", r, -EFAULT))
    exit_reason = KVM_EXIT_MEMORY_FAULT if vcpu.memory_fault is not None else 0
    gpa, size, mf_flags = vcpu.memory_fault or (0, 0, 0)
    run.checks.append(Check(stage, "exit_reason == KVM_EXIT_MEMORY_FAULT", exit_reason,
                            KVM_EXIT_MEMORY_FAULT))
    run.checks.append(Check(stage, "memory_fault.flags", mf_flags, KVM_MEMORY_EXIT_FLAG_PRIVATE))
    run.checks.append(Check(stage, "memory_fault.gpa", gpa, EXITS_TEST_GPA))
    run.checks.append(Check(stage, "memory_fault.size", size, EXITS_TEST_SIZE))


def private_mem_kvm_exits_test(profile: KernelProfile = DEFAULT_PROFILE, *,
                               read_before_delete: bool = False) -> SelftestRun:
    """``x86_64/private_mem_kvm_exits_test.c`` (6.12; needs KVM_X86_SW_PROTECTED_VM):
    ``test_private_access_memslot_deleted`` and ``..._not_private``.  The first's vCPU
    reads the private page for the first time once the slot is gone, as in the recorded
    run (``read_before_delete``: it maps it first; the delete then zaps it, and the end
    is the same).  Not modelled: the guest's page tables (slot 0)."""
    run = SelftestRun("private_mem_kvm_exits_test")
    _private_access(run, profile, "test_private_access_memslot_deleted", True,
                    read_before_delete)
    _private_access(run, profile, "test_private_access_memslot_not_private", False)
    return run
