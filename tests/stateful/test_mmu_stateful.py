"""Hypothesis stateful test of the core model: random faults, zaps, conversions, dirty
logging, NX recovery and host THP splits on a plain VM and on a TD (recording TDX fake).

After every step: page stats equal a recount of the tables, no leaf above the level
``kvm_mmu_max_mapping_level`` allows for its gfn (direct roots) or above 2M (mirror roots),
every present non-leaf points to an SP one level down, no SPTE is left frozen, no KVM_BUG,
no WARN, no lock held.
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tdpsim.model import spte as S
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.model.dump import walk_root
from tdpsim.model.invariants import check_mmu_invariants
from tdpsim.model.kvm import RecordingExternalOps
from tdpsim.model.kvm_main import (
    kvm_mmu_notifier_invalidate_range,
    kvm_mmu_slot_apply_flags,
    kvm_recover_nx_huge_pages,
    kvm_vm_set_mem_attributes,
)
from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEMORY_ATTRIBUTE_PRIVATE
from tdpsim.model.mmu import kvm_mmu_max_mapping_level
from tdpsim.model.mmu_fault import ept_violation_error_code, kvm_mmu_page_fault
from tdpsim.model.policy import Policy
from tdpsim.model.tdp_mmu import kvm_tdp_mmu_zap_leafs
from tdpsim.model.vmm import VmConfig, create_vm

NPAGES = 8 << 9  # 16 MiB: eight 2M frames
gfns = st.integers(0, NPAGES - 1)


class MmuMachine(RuleBasedStateMachine):
    @initialize(tdx=st.booleans(), nx=st.booleans(), base_gfn=st.sampled_from([0, 0x100]),
                host_level=st.sampled_from([1, 2]))
    def setup(self, tdx, nx, base_gfn, host_level):
        self.tdx = tdx
        ops = RecordingExternalOps(private_max_level=2) if tdx else None
        self.kvm = create_vm(VmConfig(tdx=tdx, mem_bytes=NPAGES << 12, base_gfn=base_gfn,
                                      host_page_level=host_level, nr_vcpus=2),
                             Policy(nx_huge_pages=nx), x86_ops=ops)
        self.slot = self.kvm.memslots[0]
        self.base = base_gfn

    def gfn(self, g):
        return self.base + g

    @rule(g=gfns, write=st.booleans(), exec=st.booleans(), vcpu=st.integers(0, 1))
    def fault(self, g, write, exec, vcpu):
        gfn = self.gfn(g)
        private = self.tdx and self.kvm.kvm_mem_is_private(gfn)
        gpa = gfn << 12
        if self.tdx and not private:
            gpa |= self.kvm.gfn_direct_bits << 12
            exec = False  # a shared exec fault on a TD is a KVM bug by design
        err = ept_violation_error_code(write=write, exec=exec and not private, private=private)
        r = kvm_mmu_page_fault(self.kvm.vcpus[vcpu], gpa, err)
        assert r in (1, 5, 6), r  # RETRY, FIXED, SPURIOUS

    @rule(g=gfns, n=st.integers(1, 1024))
    def zap(self, g, n):
        kvm = self.kvm
        kvm.mmu_lock.write_lock()
        if kvm_tdp_mmu_zap_leafs(kvm, self.gfn(g), self.gfn(g) + n, False):
            kvm.kvm_flush_remote_tlbs()
        kvm.mmu_lock.write_unlock()

    @precondition(lambda self: self.tdx)
    @rule(g=gfns, n=st.integers(1, 600), private=st.booleans())
    def convert(self, g, n, private):
        end = min(self.gfn(g) + n, self.gfn(NPAGES))
        kvm_vm_set_mem_attributes(self.kvm, self.gfn(g), end,
                                  KVM_MEMORY_ATTRIBUTE_PRIVATE if private else 0)

    @precondition(lambda self: not self.tdx)
    @rule(on=st.booleans())
    def dirty_logging(self, on):
        if bool(self.slot.flags & KVM_MEM_LOG_DIRTY_PAGES) != on:
            kvm_mmu_slot_apply_flags(self.kvm, self.slot, KVM_MEM_LOG_DIRTY_PAGES if on else 0)

    @precondition(lambda self: not self.tdx)
    @rule(g=gfns, split=st.booleans())
    def host_thp(self, g, split):
        """The host splits or collapses the THP behind a 2M frame (mmu_notifier zap)."""
        gfn = self.gfn(g) & ~511
        frame = self.slot.gfn_to_hva(gfn) >> 21
        (self.slot.backing.split_frames.add if split else self.slot.backing.split_frames.discard)(frame)
        kvm_mmu_notifier_invalidate_range(self.kvm, gfn, gfn + 512)

    @rule(ratio=st.integers(1, 4))
    def nx_recovery(self, ratio):
        kvm_recover_nx_huge_pages(self.kvm, ratio)

    @invariant()
    def structure(self):
        if not hasattr(self, "kvm"):
            return
        kvm = self.kvm
        assert check_mmu_invariants(kvm) == []
        assert not kvm.bugs and not kvm.warnings, (kvm.bugs, kvm.warnings)
        assert not kvm.mmu_lock.writer and kvm.mmu_lock.readers == 0
        assert kvm.rcu.readers == 0 and not kvm.rcu.pending
        for root in kvm.tdp_mmu_roots:
            for row in walk_root(kvm, root):
                assert row.spte != DEFAULT_PROFILE.FROZEN_SPTE
                if not row.decoded.startswith("leaf") or row.level == 1:
                    continue
                if root.role.is_mirror:
                    assert row.level <= 2
                else:
                    kvm.mmu_lock.read_lock()
                    allowed = kvm_mmu_max_mapping_level(kvm, None, self.slot, row.gfn_start)
                    kvm.mmu_lock.read_unlock()
                    assert row.level <= allowed, (hex(row.gfn_start), row.level, allowed)


MmuMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestMmuStateful = MmuMachine.TestCase
