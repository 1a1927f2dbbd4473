"""The VMX EPT-violation entry: exit qualification → error code, and its tracepoint."""

from kvm_helpers import leaf_at

from tdpsim.model import events as ev
from tdpsim.model import spte as S
from tdpsim.model.kvm_main import kvm_mmu_slot_apply_flags
from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES
from tdpsim.model.mmu_internal import RET_PF_FIXED, RET_PF_SPURIOUS
from tdpsim.model.vmx import (
    EPT_VIOLATION_PROT_READ,
    EPT_VIOLATION_PROT_EXEC,
    ept_exit_qualification,
    handle_ept_violation,
)


def test_write_fault_then_dirty_logging_fast_path(make_vm):
    kvm = make_vm()
    seen = []
    kvm.tracer = seen.append
    vcpu = kvm.vcpus[0]
    qual = ept_exit_qualification(write=True)
    assert handle_ept_violation(vcpu, 0x200000, qual) == RET_PF_FIXED
    assert seen[0] == ev.KvmPageFault(0, 0, 0x200000, qual)
    assert leaf_at(kvm, vcpu.root, 0x200)[0] == 2
    # A read of the same page now hits a present translation: spurious.
    assert handle_ept_violation(vcpu, 0x201000, ept_exit_qualification()) == RET_PF_SPURIOUS
    kvm_mmu_slot_apply_flags(kvm, kvm.memslots[0], KVM_MEM_LOG_DIRTY_PAGES)
    seen.clear()
    # The write-protected 4K page: the CPU reports R|X allowed, KVM's fast path fixes it.
    prot = EPT_VIOLATION_PROT_READ | EPT_VIOLATION_PROT_EXEC
    assert handle_ept_violation(vcpu, 0x203000, ept_exit_qualification(write=True, prot=prot)) \
        == RET_PF_FIXED
    fast = [e for e in seen if isinstance(e, ev.FastPageFault)]
    assert len(fast) == 1 and fast[0].ret == RET_PF_FIXED
    assert not S.is_writable_pte(fast[0].old_spte) and S.is_writable_pte(fast[0].new_spte)
    assert vcpu.stat.pf_fast == 1
    assert kvm.memslots[0].dirty_bitmap[0x203 >> 3] & (1 << 3)
