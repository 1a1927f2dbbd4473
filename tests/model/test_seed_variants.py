"""The seed patch's posted variants (policy.mirror_promotion): RFC v1, RFC v2 / v3 06/24
as posted, Sean's rewrite — same decision on the seed scenario, different call counts."""

import pytest

from tdpsim.model.mmu import disallowed_hugepage_adjust
from tdpsim.model.dump import walk_root
from tdpsim.model.mmu_fault import ept_violation_error_code, kvm_mmu_do_page_fault
from tdpsim.model.mmu_internal import RET_PF_FIXED, KvmPageFault
from tdpsim.model.policy import MIRROR_PROMOTION_CHOICES, Policy
from tdpsim.model.tdp_mmu import hugepage_adjust_disallowed
from tdpsim.model.vmm import VmConfig, create_vm

from test_seed_tdx import X, make_td, seed_prefix


def _fault(nx: bool) -> KvmPageFault:
    return KvmPageFault(addr=0, error_code=0, prefetch=False, exec=False, write=True,
                        present=False, rsvd=False, user=False, is_tdp=True,
                        is_private=True, nx_huge_page_workaround_enabled=nx, max_level=2)


@pytest.mark.parametrize("variant,direct_td,mirror", [
    ("disallowed", False, True), ("rfc-v1", False, True), ("v3-posted", True, True),
    ("unpatched", False, False), ("seamcall", False, False)])
def test_call_site_guard(variant, direct_td, mirror):
    kvm, _, _ = make_td(variant)
    direct, mroot = kvm.vcpus[0].root, kvm.vcpus[0].mirror_root
    assert hugepage_adjust_disallowed(kvm, _fault(False), direct) is direct_td
    assert hugepage_adjust_disallowed(kvm, _fault(False), mroot) is mirror
    assert hugepage_adjust_disallowed(kvm, _fault(True), direct) is True


def test_v3_posted_guard_is_off_on_a_plain_vm():
    kvm = create_vm(VmConfig(tdx=False, mem_bytes=16 << 20), Policy(mirror_promotion="v3-posted"))
    assert hugepage_adjust_disallowed(kvm, _fault(False), kvm.vcpus[0].root) is False


def test_rfc_v1_tests_the_passed_flag_not_the_child():
    """RFC v1's clause is ``|| is_mirror``: the caller's flag, whatever the child is."""
    kvm = create_vm(VmConfig(tdx=False, mem_bytes=16 << 20, host_page_level=1),
                    Policy(mirror_promotion="rfc-v1"))
    vcpu = kvm.vcpus[0]
    # A 4K fault (4K-backed host memory) builds a table under the 2M entry.
    assert kvm_mmu_do_page_fault(vcpu, 0x205 << 12, ept_violation_error_code(write=True)) == RET_PF_FIXED
    rows = [r for r in walk_root(kvm, vcpu.root, 0x205, 0x206) if r.level == 2]
    spte = rows[0].spte
    f = _fault(False)
    f.goal_level, f.gfn = 2, 0x205
    assert disallowed_hugepage_adjust(kvm, f, spte, 2, is_mirror=False) is False
    assert disallowed_hugepage_adjust(kvm, f, spte, 2, is_mirror=True) is True
    assert f.goal_level == 1 and f.pfn & 0x1FF == 0x005


@pytest.mark.parametrize("variant", ["disallowed", "rfc-v1", "v3-posted"])
def test_seed_scenario_same_decision_every_patched_variant(variant):
    kvm, tdx, g = seed_prefix(variant)
    n = len(tdx.log)
    assert g.touch(X, accept_on_ve=True).pfn is not None
    assert tdx.leaf_sequence(n) == ["ENTER", "AUG", "ENTER"]
    st = kvm.hugepage_adjust
    assert (st.opportunities, st.lowered_mirror, st.lowered_direct) == (1, 1, 0)
    assert st.frames == {(2, X >> 12 & ~0x1FF)}
    assert not kvm.bugs


@pytest.mark.parametrize("variant,opp,lowered", [("unpatched", 1, 0), ("seamcall", 1, 0)])
def test_seed_scenario_unguarded_variants_count_the_opportunity(variant, opp, lowered):
    kvm, tdx, g = seed_prefix(variant)
    g.touch(X, accept_on_ve=True)
    st = kvm.hugepage_adjust
    assert (st.opportunities, st.lowered_mirror, st.calls_mirror) == (opp, lowered, 0)


def test_every_variant_is_a_choice():
    assert MIRROR_PROMOTION_CHOICES == ("disallowed", "rfc-v1", "v3-posted", "unpatched",
                                        "seamcall")
