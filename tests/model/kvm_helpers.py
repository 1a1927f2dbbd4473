"""Builders and walkers shared by the core-model tests."""

from tdpsim.model import spte as S
from tdpsim.model.mmu_fault import ept_violation_error_code, kvm_mmu_page_fault
from tdpsim.model.tdp_iter import spte_to_child_sp


def fault(kvm, gfn, *, vcpu=0, write=True, exec=False, private=None, present=False):
    """An EPT violation on ``gfn`` (private by default on a TD)."""
    if private is None:
        private = kvm.kvm_has_mirrored_tdp()
    gpa = gfn << 12
    if kvm.kvm_has_mirrored_tdp() and not private:
        gpa |= kvm.gfn_direct_bits << 12
    err = ept_violation_error_code(write=write, exec=exec, private=private, present=present)
    return kvm_mmu_page_fault(kvm.vcpus[vcpu], gpa, err)


def leaf_at(kvm, root, gfn):
    """(level, spte) of the leaf mapping gfn in root, or (level, value) where the walk stops."""
    sp, level = root, root.role.level
    while True:
        spte = sp.spt[S.SPTE_INDEX(gfn | kvm.kvm_gfn_root_bits(root), level)]
        if not S.is_shadow_present_pte(spte) or S.is_last_spte(spte, level):
            return level, spte
        sp, level = spte_to_child_sp(kvm, spte), level - 1


def force_4k(kvm, gfn, delta=1):
    """Pin gfn's 2M/1G frames to 4K with a disallow_lpage count (as write tracking does)."""
    slot = kvm.gfn_to_memslot(gfn)
    for level in (2, 3):
        slot.lpage_info[level][slot.lpage_index(gfn, level)] += delta


def unforce_4k(kvm, gfn):
    force_4k(kvm, gfn, -1)


def table_4k_of(kvm, root, gfn):
    """The 4K page-table page under gfn's 2M entry."""
    sp = root
    for level in range(root.role.level, 1, -1):
        sp = spte_to_child_sp(kvm, sp.spt[S.SPTE_INDEX(gfn, level)])
    return sp
