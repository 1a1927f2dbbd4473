"""The seed scenario command's engine: exact outcomes of every variant."""

import pytest

from tdpsim.scenarios.seed import VARIANTS, run_seed, run_seed_variant


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
    o = run_seed_variant("mirror-unpatched")
    assert o.vm_bugged and o.bugs[0].startswith("KVM_BUG_ON in set_external_spte_present")
    assert o.final_seamcalls == ["ENTER", "AUG@2M"]
    assert o.failed_seamcalls == ["AUG → TDX_EPT_ENTRY_STATE_INCORRECT|RCX"]
    assert o.final_level == "none" and o.pages == (511, 0, 0)


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
