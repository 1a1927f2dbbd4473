"""The seed's scenario end to end on a finalized TD, under the three mirror-promotion
policies (reference §9.4, seed review of HP-v3 patch 06).

Flow: the guest accepts a 2 MB range at 2M; 4K of it is converted private→shared (the 2M
leaf is demoted: BLOCK, TRACK, DEMOTE; then the 4K removed: BLOCK, TRACK, REMOVE, WBINVD)
and back to private; then a fault that may map 2M on the range arrives.  For that fault
to be allowed 2M, nothing may have set GUEST_INHIBIT on the frame, so the guest touches
the re-converted page before accepting it (a non-Linux guest, #VE enabled): the touch is
an ordinary EPT violation on a FREE S-EPT entry and KVM's goal level is 2M.  (A Linux
guest accepts first; its 4K ACCEPT exit sets GUEST_INHIBIT at 2M and no later fault ever
asks for 2M again — ``test_linux_guest_inhibit_means_no_2m_attempt``.)
"""

from __future__ import annotations

from collections import Counter

import pytest

from tdpsim.model.invariants import check_invariants
from tdpsim.model.policy import Policy
from tdpsim.model.tdx import TDX_PS_2M, TDX_PS_4K, TdGuest, create_td
from tdpsim.model.tdx_module import FREE, MAPPED, NL_MAPPED, PENDING
from tdpsim.model.vmm import VmConfig

M2 = 2 << 20
BASE = M2          # the 2 MB range the guest accepts (gpa)
X = BASE + 5 * 4096  # the 4K page converted private -> shared -> private
BASE_PFN = (128 << 30 >> 12) + (BASE >> 12)  # guest_memfd pfn of BASE (vmm.GMEM_PFN_BASE)

INVALID_PROMOTE_CONDITIONS_RCX = 0xC0000B0900000001
GPA_RANGE_NOT_BLOCKED_RCX = 0xC0000B0600000001
TLB_TRACKING_NOT_DONE_RCX = 0xC0000B0800000001


def make_td(policy: str, **kw):
    kvm, tdx = create_td(VmConfig(tdx=True, mem_bytes=16 << 20, nr_vcpus=2),
                         Policy(mirror_promotion=policy), sept_ve_disable=False, **kw)
    assert tdx.tdx_td_finalize(kvm) == 0
    return kvm, tdx, TdGuest(kvm, tdx)


def seed_prefix(policy: str):
    """Accept 2M at 2M, convert X to shared and back to private."""
    kvm, tdx, g = make_td(policy)
    assert g.accept_memory(BASE, BASE + M2)
    assert tdx.module.entry(BASE, 1) == (MAPPED, BASE_PFN)
    assert g.set_memory_decrypted(X, 4096)
    assert g.map_gpa(X, 4096, shared=False) == 0
    return kvm, tdx, g


def all_ok(tdx, start=0):
    return all(r.status == 0 for r in tdx.log[start:])


def test_seed_prefix_exact_sequences():
    kvm, tdx, g = make_td("disallowed")
    # Linux tries 2M (1G does not fit in 2 MB): EPT violation ACCEPT@2M,
    # GUEST_INHIBIT at 1G, SEPT.ADD ×2 and AUG at 2M, then the re-executed ACCEPT succeeds.
    n = len(tdx.log)
    assert g.accept_memory(BASE, BASE + M2)
    assert tdx.leaf_sequence(n) == ["ENTER", "SEPT.ADD", "SEPT.ADD", "AUG", "ENTER"]
    aug = tdx.seamcalls("TDH.MEM.PAGE.AUG")[-1]
    assert (aug.gfn, aug.level, aug.status) == (BASE >> 12, 2, 0)
    assert g.stats.accepts == {("2M", "TDX_SUCCESS"): 1}
    assert g.stats.accept_exits == 1 and tdx.stats.accept_exits == 1
    assert list(kvm.stat.pages) == [0, 1, 0]
    slot = kvm.memslots[0]
    from tdpsim.model.kvm_main import hugepage_test_guest_inhibit
    assert hugepage_test_guest_inhibit(slot, BASE >> 12, 3)
    assert not hugepage_test_guest_inhibit(slot, BASE >> 12, 2)

    # private -> shared of 4K: demote the 2M leaf, then remove the 4K page.
    n = len(tdx.log)
    epoch = tdx.module.td_epoch
    assert g.set_memory_decrypted(X, 4096)
    # (the vCPU is still in guest mode after the accept: the MapGPA exit needs no ENTER)
    assert tdx.leaf_sequence(n) == ["BLOCK", "TRACK", "DEMOTE",
                                    "BLOCK", "TRACK", "REMOVE", "WBINVD"]
    levels = [(r.leaf.split(".")[-1], r.level) for r in tdx.log[n:]]
    assert levels == [("BLOCK", 2), ("TRACK", 0), ("DEMOTE", 2), ("BLOCK", 1), ("TRACK", 0),
                      ("REMOVE", 1), ("WBINVD", 1)]
    assert all_ok(tdx, n)
    assert tdx.module.td_epoch == epoch + 2 and tdx.module.track_count == 2
    assert tdx.module.entry(BASE, 1)[0] == NL_MAPPED
    assert tdx.module.entry(X, 0) == (FREE, 0)
    assert tdx.module.entry(X + 4096, 0) == (MAPPED, BASE_PFN + 6)
    assert list(kvm.stat.pages) == [511, 0, 0]
    assert g.stats.mapgpa_chunks == 1 and not kvm.kvm_mem_is_private(X >> 12)

    # back to private: no private mapping to zap, no SEAMCALL but the re-entry (the TRACKs
    # kicked the vCPU out); MIXED is cleared again.
    n = len(tdx.log)
    assert g.map_gpa(X, 4096, shared=False) == 0
    assert tdx.leaf_sequence(n) == ["ENTER"]
    assert not slot.disallow_lpage(BASE >> 12, 2)
    assert check_invariants(kvm, tdx, quiescent=True) == []


def test_seed_disallowed_stays_4k_no_seamcall_fails():
    kvm, tdx, g = seed_prefix("disallowed")
    n = len(tdx.log)
    # The touch: EPT violation on a FREE entry, goal 2M, SEED lowers it to 4K: AUG 4K.
    res = g.touch(X, accept_on_ve=True)
    assert res.pfn == BASE_PFN + 5
    assert tdx.leaf_sequence(n) == ["ENTER", "AUG", "ENTER"]
    aug = tdx.seamcalls("TDH.MEM.PAGE.AUG")[-1]
    assert (aug.gfn, aug.level) == (X >> 12, 1)
    assert g.stats.ve == 1 and g.stats.accepts[("4K", "TDX_SUCCESS")] == 1
    assert tdx.module.entry(X, 0) == (MAPPED, BASE_PFN + 5)
    # A later fault that may map 2M (another vCPU's racing violation): still 4K, spurious.
    n = len(tdx.log)
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[1], X + 4096) == 6  # RET_PF_SPURIOUS
    assert tdx.leaf_sequence(n) == []
    assert all_ok(tdx) and tdx.stats.promote_attempts == 0
    assert list(kvm.stat.pages) == [512, 0, 0]
    assert not kvm.bugs and check_invariants(kvm, tdx, quiescent=True) == []


def test_seed_unpatched_kvm_bug():
    """HP-v3 09/24 set_external_spte_present: table → huge leaf is no valid transition;
    KVM_BUG_ON does not return, no hook runs (no 2M AUG), the 2M SPTE is written and the
    old table goes through handle_removed_pt under the shared lock."""
    kvm, tdx, g = seed_prefix("unpatched")
    n = len(tdx.log)
    augs = len(tdx.seamcalls("TDH.MEM.PAGE.AUG"))
    g.touch(X, accept_on_ve=True)
    assert kvm.vm_bugged and kvm.vm_dead
    assert [b.function for b in kvm.bugs] == [
        "set_external_spte_present", "handle_removed_pt", "tdx_sept_remove_private_spte",
        "tdx_sept_free_private_spt"]
    assert len(tdx.seamcalls("TDH.MEM.PAGE.AUG")) == augs
    # Each of the 512 children is handed to tdx_sept_remove_private_spte: 511 removed,
    # the converted (non-present) one's BLOCK fails on its FREE entry.
    assert Counter(tdx.leaf_sequence(n)) == {"ENTER": 1, "BLOCK": 512, "TRACK": 511,
                                             "REMOVE": 511, "WBINVD": 511}
    assert tdx.module.entry(BASE, 1)[0] == NL_MAPPED  # S-EPT still has the 2M table
    inv = check_invariants(kvm, tdx)
    assert inv[0].startswith("KVM_BUG_ON in set_external_spte_present")
    assert inv[-2:] == ["mirror L2 leaf gfn 0x200 pfn 0x2000200 but S-EPT has NL_MAPPED "
                        "pfn 0x100007", "S-EPT L1 NL_MAPPED gfn 0x200 without a mirror table"]
    assert g.enter() is False  # KVM_RUN now fails


def test_seed_seamcall_promote_refused_then_4k():
    kvm, tdx, g = seed_prefix("seamcall")
    n = len(tdx.log)
    # Touch without accepting yet: 511 MAPPED + 1 FREE children -> PROMOTE refused.
    res = g.touch(X)
    assert res.ve
    assert tdx.leaf_sequence(n) == ["ENTER", "BLOCK", "TRACK", "PROMOTE", "UNBLOCK", "AUG",
                                    "ENTER"]
    promote = tdx.seamcalls("TDH.MEM.PAGE.PROMOTE")[-1]
    assert (promote.gfn, promote.level) == (BASE >> 12, 2)
    assert promote.status == INVALID_PROMOTE_CONDITIONS_RCX
    assert promote.name == "TDX_EPT_INVALID_PROMOTE_CONDITIONS|RCX"
    assert tdx.last_promote_status == INVALID_PROMOTE_CONDITIONS_RCX
    assert tdx.module.entry(X, 0) == (PENDING, BASE_PFN + 5)
    assert tdx.module.entry(BASE, 1)[0] == NL_MAPPED  # unblocked again
    assert check_invariants(kvm, tdx, quiescent=True) == []
    # HPR1's example: 511 ACCEPTED + 1 PENDING — a later fault is refused again.
    n = len(tdx.log)
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[1], BASE + 0x10000) == 6
    assert tdx.leaf_sequence(n) == ["BLOCK", "TRACK", "PROMOTE", "UNBLOCK"]
    assert tdx.log[-2].status == INVALID_PROMOTE_CONDITIONS_RCX
    assert tdx.stats.promote_failures == {"TDX_EPT_INVALID_PROMOTE_CONDITIONS|RCX": 2}
    assert tdx.stats.promote_successes == 0
    assert g.tdcall_accept(X, TDX_PS_4K) == 0
    assert list(kvm.stat.pages) == [512, 0, 0]
    assert not kvm.bugs and check_invariants(kvm, tdx, quiescent=True) == []


@pytest.mark.parametrize("policy", ["disallowed", "unpatched", "seamcall"])
def test_linux_guest_inhibit_means_no_2m_attempt(policy):
    """The literal order (AUG 4K → PENDING, guest accepts, later fault): a Linux guest's
    4K ACCEPT exit sets GUEST_INHIBIT at 2M, so no later fault on the frame asks for 2M and
    the three policies behave the same."""
    kvm, tdx, g = seed_prefix(policy)
    n = len(tdx.log)
    assert g.accept_memory(X, X + 4096)
    assert tdx.leaf_sequence(n) == ["ENTER", "AUG", "ENTER"]
    assert tdx.stats.accept_level_write_locks == 2  # the 2M accept and this 4K one
    n = len(tdx.log)
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[1], X + 4096) == 6
    assert tdx.leaf_sequence(n) == []
    assert tdx.stats.promote_attempts == 0 and not kvm.bugs
    assert check_invariants(kvm, tdx, quiescent=True) == []


def build_uniform(policy: str = "seamcall"):
    """A 2M frame of the initial image (512 × PAGE.ADD at 4K: all MAPPED, contiguous,
    aligned), then finalize."""
    kvm, tdx = create_td(VmConfig(tdx=True, mem_bytes=16 << 20, nr_vcpus=2),
                         Policy(mirror_promotion=policy))
    assert tdx.tdx_vcpu_init_mem_region(kvm.vcpus[0], BASE, 512) == 0
    assert tdx.tdx_td_finalize(kvm) == 0
    return kvm, tdx, TdGuest(kvm, tdx)


def test_seamcall_uniform_children_promote_after_block_and_track():
    kvm, tdx, g = build_uniform()
    assert list(kvm.stat.pages) == [512, 0, 0]
    n = len(tdx.log)
    # A racing EPT violation on the frame (the guest already has all of it accepted).
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], BASE + 0x3000) == 5  # RET_PF_FIXED
    assert tdx.leaf_sequence(n) == ["BLOCK", "TRACK", "PROMOTE", "WBINVD"]
    assert all_ok(tdx, n)
    assert tdx.module.entry(BASE, 1) == (MAPPED, BASE_PFN)
    assert list(kvm.stat.pages) == [0, 1, 0]
    assert tdx.stats.promote_successes == 1
    assert g.touch(BASE + 0x3000).pfn == BASE_PFN + 3
    assert check_invariants(kvm, tdx, quiescent=True) == []


def test_seamcall_promote_without_block_fails():
    kvm, tdx, g = build_uniform()
    tdx.promote_skip_block = True
    n = len(tdx.log)
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], BASE) == 6  # falls back: 4K spurious
    assert tdx.leaf_sequence(n) == ["TRACK", "PROMOTE"]
    assert tdx.log[-1].status == GPA_RANGE_NOT_BLOCKED_RCX
    assert tdx.stats.promote_failures == {"TDX_GPA_RANGE_NOT_BLOCKED|RCX": 1}
    assert tdx.module.entry(BASE, 1)[0] == NL_MAPPED
    assert list(kvm.stat.pages) == [512, 0, 0]
    assert not kvm.bugs and check_invariants(kvm, tdx, quiescent=True) == []


def test_seamcall_promote_without_track_fails():
    kvm, tdx, g = build_uniform()
    tdx.promote_skip_track = True
    n = len(tdx.log)
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], BASE) == 6
    # Refused, then TRACK so that the UNBLOCK is allowed.
    assert tdx.leaf_sequence(n) == ["BLOCK", "PROMOTE", "TRACK", "UNBLOCK"]
    assert tdx.seamcalls("TDH.MEM.PAGE.PROMOTE")[-1].status == TLB_TRACKING_NOT_DONE_RCX
    assert tdx.stats.promote_failures == {"TDX_TLB_TRACKING_NOT_DONE|RCX": 1}
    assert tdx.module.entry(BASE, 1)[0] == NL_MAPPED
    assert not kvm.bugs and check_invariants(kvm, tdx, quiescent=True) == []


@pytest.mark.parametrize("policy", ["disallowed", "unpatched"])
def test_build_time_frame_never_promoted_by_other_policies(policy):
    """§9.9: frames holding build-time pages stay 4K (SEED) — or bug the VM (unpatched)."""
    kvm, tdx, g = build_uniform(policy)
    tdx.tdx_handle_ept_violation(kvm.vcpus[0], BASE)
    assert tdx.seamcalls("TDH.MEM.PAGE.PROMOTE") == []
    if policy == "disallowed":
        assert list(kvm.stat.pages) == [512, 0, 0] and not kvm.bugs
    else:
        assert kvm.bugs[0].function == "set_external_spte_present"


def test_seamcall_accept_2m_after_promoting_pending_children():
    """Uniformly PENDING children (AUGed at 4K, never accepted) also merge; the merged 2M
    leaf is PENDING and the guest accepts it at 2M."""
    kvm, tdx, g = make_td("seamcall")
    # Fault the frame in at 4K (as UPSTREAM KVM would), then allow 2M again.
    kvm.policy = kvm.policy.with_(tdx_huge_page=False)
    for i in range(512):
        assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], BASE + i * 4096) == 5
    assert list(kvm.stat.pages) == [512, 0, 0]
    kvm.policy = kvm.policy.with_(tdx_huge_page=True)
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], BASE) == 5
    assert tdx.module.entry(BASE, 1) == (PENDING, BASE_PFN)
    assert g.tdcall_accept(BASE, TDX_PS_2M) == 0
    assert tdx.module.entry(BASE, 1) == (MAPPED, BASE_PFN)
    assert check_invariants(kvm, tdx, quiescent=True) == []
