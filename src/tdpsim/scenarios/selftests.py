"""KVM's own selftests as model scenarios: the same steps, the same asserts.

* :func:`nx_huge_pages_test` — ``tools/testing/selftests/kvm/x86_64/nx_huge_pages_test.c``
  (run by its ``.sh`` wrapper: ``nx_huge_pages=1``, recovery ratio 1, period 100 ms):
  read, read, execute, execute, read, wait for recovery, read; after each step the VM's
  ``pages_2m`` and ``nx_lpage_splits`` are checked.  ``disable_nx_huge_pages`` is the
  run with ``KVM_CAP_VM_DISABLE_NX_HUGE_PAGES``.
* :func:`dirty_log_page_splitting_test` — ``x86_64/dirty_log_page_splitting_test.c``:
  populate, enable dirty logging, two dirty passes (GET, plus CLEAR with
  ``manual_caps``), disable, repopulate; the asserts on ``pages_4k/2m/1g``.

Each returns :class:`SelftestRun`: every assert as a :class:`Check` (what the selftest
compares, both sides).  Runs on a kvm_amd VM (NPT, the TDP MMU) as on the oracle.

Simplifications: the selftests' slot 0 (code, stack, page tables) is not modelled; the
kernel's passing runs show it contributes no huge pages to the counts compared.  The
vCPUs of the page-splitting test run one after the other; the recovery worker runs once
where the selftest sleeps (ratio 1 zaps everything in one run).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.kvm import Kvm
from ..model.kvm_main import (kvm_mmu_slot_apply_flags, kvm_recover_nx_huge_pages,
                              kvm_set_memory_region)
from ..model.memslot import KVM_MEM_LOG_DIRTY_PAGES, HostBacking, KvmMemorySlot
from ..model.mmu_fault import kvm_mmu_load
from ..model.policy import Policy
from ..model.profile import DEFAULT_PROFILE, KernelProfile
from ..model.spte import PAGE_SHIFT, PG_LEVEL_2M
from ..model.svm import npt_access
from ..model.dirty_log import (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_INITIALLY_SET,
                               KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, kvm_dirty_bitmap_bytes)
from ..model.ioctl import (kvm_vm_ioctl_clear_dirty_log, kvm_vm_ioctl_enable_cap,
                           kvm_vm_ioctl_get_dirty_log)

__all__ = ["Check", "SelftestRun", "nx_huge_pages_test", "dirty_log_page_splitting_test"]

MiB = 1 << 20
PAGE_2M = 2 * MiB


@dataclass(frozen=True)
class Check:
    """One ``TEST_ASSERT``: ``left <op> right`` at ``stage``."""

    stage: str
    what: str
    left: int
    right: int
    op: str = "=="

    @property
    def ok(self) -> bool:
        return self.left == self.right if self.op == "==" else self.left >= self.right

    def __str__(self) -> str:
        return f"{self.stage}: {self.what}: {self.left} {self.op} {self.right}" + (
            "" if self.ok else "  FAILED")


@dataclass
class SelftestRun:
    name: str
    checks: list[Check] = field(default_factory=list)

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

