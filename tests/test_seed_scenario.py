"""The seed scenario command's engine: exact outcomes of every variant."""

import pytest

from tdpsim.scenarios.seed import VARIANTS, run_length, run_seed, run_seed_variant


def test_direct_root_promotes_over_the_table():
    o = run_seed_variant("direct")
    assert o.final_level == "2M" and o.pages == (0, 1, 0)
    assert o.tdp_mmu_pages == 2  # the 4K table went with the promotion
    assert o.tlb_flush_requests == 2  # the collapse's zap and the promotion
    assert not o.vm_bugged and o.final_seamcalls == []


def test_mirror_patched_maps_4k_and_no_seamcall_fails():
    o = run_seed_variant("mirror-patched")
    assert o.final_level == "4K" and o.pages == (512, 0, 0)
    assert o.final_seamcalls == ["ENTER", "AUG@4K", "ENTER"]
    assert o.failed_seamcalls == [] and not o.vm_bugged
    assert o.steps[1][1] == "ok BLOCK TRACK DEMOTE BLOCK TRACK REMOVE WBINVD"


def test_mirror_unpatched_bugs_the_vm():
    """HP-v3 09/24 without the SEED patch: no AUG at 2M (no hook for table → huge leaf);
    the 2M SPTE is written and the 4K table torn down under the shared lock."""
    o = run_seed_variant("mirror-unpatched")
    assert o.vm_bugged
    assert [b.split(":")[0] for b in o.bugs] == [
        "KVM_BUG_ON in set_external_spte_present", "KVM_BUG_ON in handle_removed_pt",
        "KVM_BUG_ON in tdx_sept_remove_private_spte", "KVM_BUG_ON in tdx_sept_free_private_spt"]
    assert o.warnings == ["WARN in lockdep: mmu_lock not held for write",
                          "WARN in handle_removed_pt: free_external_spt failed; page leaked"]
    # 511 present children removed one by one; the converted page's BLOCK fails (FREE).
    assert run_length(o.final_seamcalls) == [
        "ENTER", "(BLOCK@4K TRACK REMOVE@4K WBINVD@4K)×5", "BLOCK@4K",
        "(BLOCK@4K TRACK REMOVE@4K WBINVD@4K)×506"]
    assert o.failed_seamcalls == ["BLOCK → TDX_EPT_ENTRY_STATE_INCORRECT|RCX"]
    # The mirror holds a 2M leaf; the S-EPT still a 2M table with every child FREE.
    assert o.final_level == "2M" and o.pages == (0, 1, 0)
    assert o.sept_entry == "2M NL_MAPPED / 4K FREE"
    assert o.tdp_mmu_pages == 2 and o.tlb_flush_requests == 2


def test_run_length_folds_repeats():
    assert run_length(list("ABABABC")) == ["(A B)×3", "C"]
    assert run_length(list("AAB")) == ["A", "A", "B"]
    assert run_length([]) == []


def test_mirror_seamcall_promote_refused():
    o = run_seed_variant("mirror-seamcall")
    assert o.final_seamcalls == ["ENTER", "BLOCK@2M", "TRACK", "PROMOTE@2M", "UNBLOCK@2M",
                                 "AUG@4K", "ENTER"]
    assert o.failed_seamcalls == ["PROMOTE → TDX_EPT_INVALID_PROMOTE_CONDITIONS|RCX"]
    assert o.final_level == "4K" and not o.vm_bugged


def test_deterministic_and_validated():
    assert [o.__dict__ for o in run_seed()] == [o.__dict__ for o in run_seed()]
    assert [o.variant for o in run_seed()] == list(VARIANTS)
    with pytest.raises(ValueError, match="unknown seed variant"):
        run_seed_variant("mirror")
