"""The model side of kvm-check: HostScenario → model phases (no /dev/kvm needed)."""

from pathlib import Path

import pytest

from tdpsim.kvmcheck.compare import CHECK_MATRIX, compare_results, load_report
from tdpsim.kvmcheck.guest import PAGE_2M, PAGE_4K
from tdpsim.kvmcheck.host_matrix import PRIVATE_ROWS, HostScenario, PageCounts
from tdpsim.kvmcheck.model_side import (SHADOW, TDP, guest_page_tables,
                                        host_huge_frames_by_phase, mmu_kind, model_policy,
                                        run_model_scenario)
from tdpsim.kvmcheck.pt_window import PT_WINDOW_ROW, PtWindowScenario
from tdpsim.kvmcheck.vm import PT_OFFSET
from tdpsim.model.profile import DEFAULT_PROFILE, KERNEL_6_1, KERNEL_6_12

RECORDED = Path(__file__).parent / "data" / "kvm_check_recorded.json"
SHADOW_PARAMS = {"tdp_mmu": "N", "nx_huge_pages": "N", "eager_page_split": "Y"}
TDP_PARAMS = {"tdp_mmu": "Y", "nx_huge_pages": "N", "eager_page_split": "Y"}
BY_NAME = {s.name: s for s in CHECK_MATRIX}


@pytest.fixture(scope="module")
def recorded():
    return {h.scenario.name: h for h in load_report(RECORDED.read_text())}


def test_mmu_kind_and_policy_from_module_parameters():
    assert mmu_kind({"tdp_mmu": "N"}) == SHADOW
    assert mmu_kind({}) == SHADOW
    assert mmu_kind({"tdp_mmu": "Y"}) == TDP
    p = model_policy({"nx_huge_pages": "force", "eager_page_split": "N"})
    assert p.nx_huge_pages and not p.eager_page_split
    assert not model_policy(SHADOW_PARAMS).nx_huge_pages


def test_guest_page_tables_match_touchguest_layout():
    pt, sys_size = guest_page_tables(BY_NAME["guest-4k"])
    assert pt.cr3 == PT_OFFSET and sys_size == PAGE_2M
    s = BY_NAME["guest-4k"]
    assert pt.translate(s.gpa + 5 * PAGE_4K) == (s.gpa + 5 * PAGE_4K, PAGE_4K)
    assert pt.translate(BY_NAME["aligned"].gpa)[1] == PAGE_4K  # same gpa, same tables
    pt2, _ = guest_page_tables(BY_NAME["aligned"])
    assert pt2.translate(s.gpa) == (s.gpa, PAGE_2M)


def test_pt_window_tables_point_into_the_window():
    s = PT_WINDOW_ROW
    pt, _ = guest_page_tables(s)
    # the PD entry for the mapped frame now points at the PT inside the window; the
    # model reads that PT from the window, so translate() (image only) cannot follow it
    pd = pt._table_for(2, s.mapped_va)
    assert pt._entry_get(pd, (s.mapped_va >> 21) & 0x1FF) & ~0xFFF == s.pt_gpa
    with pytest.raises(ValueError):
        PtWindowScenario("bad", access="write")


def test_derived_host_frames_follow_the_scenario():
    frames = host_huge_frames_by_phase(BY_NAME["thp-split-mremap"])
    assert frames["touch"] == (True,) * 8
    assert frames["thp_split_mremap"] == (True, True, True, False, True, True, True, True)
    assert host_huge_frames_by_phase(BY_NAME["thp-off"])["touch"] == (False,) * 8
    assert len(host_huge_frames_by_phase(BY_NAME["hva-skew-4k"])["touch"]) == 9
    assert host_huge_frames_by_phase(BY_NAME["thp-nohugepage-after-mapping"])[
        "thp_split_nohugepage"] == (True,) * 8


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_shadow_model_reproduces_the_expected_census(name):
    s = BY_NAME[name]
    r = run_model_scenario(s, SHADOW_PARAMS)
    assert r.mmu == SHADOW
    assert r.final == s.expected
    assert r.warmup_sptes == 8     # code page fault + 7 prefetched neighbours


def test_shadow_model_fault_counts():
    pf = {n: sum(p.counters.get("pf_fixed", 0) for p in run_model_scenario(
        BY_NAME[n], SHADOW_PARAMS).phases)
        for n in ("aligned", "gpa-skew-4k", "hva-skew-4k", "both-skew-4k", "thp-off",
                  "guest-4k", "tail-frame", "dirty-log-before-touch", "guest-pt-in-window")}
    assert pf == {"aligned": 8, "gpa-skew-4k": 519, "hva-skew-4k": 512, "both-skew-4k": 78,
                  "thp-off": 512, "guest-4k": 512, "tail-frame": 40,
                  "dirty-log-before-touch": 4096, "guest-pt-in-window": 134}


def test_shadow_model_phases_of_dirty_logging():
    r = run_model_scenario(BY_NAME["dirty-log-manual-protect"], SHADOW_PARAMS)
    assert [(p.name, p.pages, p.counters.get("pf_fixed", 0), p.dirty_pages) for p in r.phases] == [
        ("touch", PageCounts(0, 8, 0), 8, None),
        ("dirty_log_on", PageCounts(0, 8, 0), 0, None),
        ("write_logged", PageCounts(4096, 0, 0), 4096, 4096),
        ("clear_dirty_log", PageCounts(4096, 0, 0), 0, None),
        ("write_after_clear", PageCounts(4096, 0, 0), 4096, 4096),
    ]


def test_tdp_model_is_chosen_by_tdp_mmu_y_and_differs_where_tdp_mmu_does():
    r = run_model_scenario(BY_NAME["guest-4k"], TDP_PARAMS)
    # under NPT the CPU's walk of the guest's page tables goes through the NPT: the 8 PT
    # pages and the PD of the window are mapped 4K (measured on 6.1 and 6.12 under TCG)
    assert r.mmu == TDP and r.final == PageCounts(9, 8, 0)
    r = run_model_scenario(BY_NAME["dirty-log-after-mapping"], TDP_PARAMS)
    assert r.phase("dirty_log_on").pages == PageCounts(4097, 0, 0)   # eager split (+ guest PD)
    r = run_model_scenario(BY_NAME["hva-skew-4k"], TDP_PARAMS)
    assert r.phase("touch").counters["pf_fixed"] == 4097             # no prefetch (+ guest PD)
    r = run_model_scenario(BY_NAME["dirty-log-disable-again"], TDP_PARAMS)
    assert r.phase("dirty_log_off").pages == PageCounts(1, 8, 0)     # recovered in place
    # the recovered 2M leaves inherit the write protection of GET_DIRTY_LOG: one fast
    # page fault per frame makes each writable again
    assert r.phase("touch_again").counters.get("pf_fixed", 0) == 8
    assert run_model_scenario(PT_WINDOW_ROW, TDP_PARAMS).final == PageCounts(1, 8, 0)


PRIVATE = {s.name: s for s in PRIVATE_ROWS}


def _private(name, profile=KERNEL_6_12):
    return run_model_scenario(PRIVATE[name], TDP_PARAMS, profile=profile)


def test_private_memory_maps_4k_from_guest_memfd_and_2m_when_shared():
    """kvm_faultin_pfn_private: 6.12's guest_memfd reports max_order 0, so private faults
    map 4K; the shared side maps 2M from THP (each row's first page-table 4K aside)."""
    assert _private("swprot-shared").phase("0-touch").pages == PageCounts(1, 8, 0)
    r = _private("swprot-private")
    assert r.phase("0-private").pages == PageCounts() and r.final == PageCounts(4097, 0, 0)
    assert r.phase("1-touch").counters["pf_fixed"] == 4097
    # one private 4K page makes its 2M frame MIXED (hugepage_has_attrs): 511 shared 4K
    r = _private("swprot-private-4k-in-2m")
    assert r.phase("1-private").pages == PageCounts(1, 7, 0)
    assert r.final == PageCounts(513, 7, 0)
    assert _private("swprot-to-shared-half").final == PageCounts(2049, 4, 0)


def test_a_guest_memfd_hole_zaps_shared_leaves_and_whole_straddling_ones_on_6_12():
    """kvm_gmem_invalidate_begin passes KVM_FILTER_PRIVATE, but 6.12's
    kvm_tdp_mmu_unmap_gfn_range has no mirror roots to pick and zaps the shared leaf;
    tdp_mmu_zap_leafs zaps the huge leaves straddling [1 MiB, 3 MiB) whole.  HP-v3 splits
    them first (KernelProfile.split_cross_boundary_leafs)."""
    assert _private("swprot-punch-shared").phase("1-punch").pages == PageCounts(1, 7, 0)
    assert _private("swprot-punch-straddle").phase("1-punch").pages == PageCounts(1, 6, 0)
    hp = _private("swprot-punch-straddle", DEFAULT_PROFILE)
    assert hp.phase("1-punch").pages == PageCounts(513, 6, 0)
    r = _private("swprot-shared-straddle")
    assert r.phase("3-shared").pages == PageCounts(257, 6, 0)
    assert _private("swprot-shared-straddle", DEFAULT_PROFILE).phase("3-shared").pages == \
        PageCounts(513, 6, 0)


def test_pre_fault_memory_counts_no_fault_on_6_12():
    r = _private("swprot-prefault-private")
    assert r.phase("1-prefault").pages == PageCounts(4096, 0, 0)
    assert r.phase("1-prefault").counters == {}
    assert r.phase("2-touch").counters["pf_fixed"] == 1      # only the window's PT page
    assert _private("swprot-prefault-shared").phase("0-prefault").pages == PageCounts(0, 8, 0)


def test_private_rows_need_a_kernel_with_the_sw_protected_vm_type():
    with pytest.raises(ValueError):
        _private("swprot-shared", KERNEL_6_1)
    with pytest.raises(ValueError, match="TDP MMU only"):
        run_model_scenario(PRIVATE["swprot-shared"], SHADOW_PARAMS)
    with pytest.raises(ValueError, match="step punch needs private_mem"):
        HostScenario("x", steps=(("punch", 0, PAGE_4K),))
    with pytest.raises(ValueError, match="a step is one of"):
        HostScenario("x", private_mem=True, steps=(("convert", 0, PAGE_4K),))


def test_no_eager_split_without_the_parameter_on_tdp():
    r = run_model_scenario(BY_NAME["dirty-log-after-mapping"],
                           dict(TDP_PARAMS, eager_page_split="N"))
    assert r.phase("dirty_log_on").pages == PageCounts(1, 8, 0)


def test_model_uses_the_measured_host_frames(recorded):
    h = recorded["thp-off"]
    assert h.phases[0].host_huge_frames == (False,) * 8
    r = run_model_scenario(h.scenario, host=h)
    assert r.phase("touch").host_huge_frames == (False,) * 8
    # the same scenario told that the host had THPs maps 2M
    fake = HostScenario("thp-off-but-huge", thp=True)
    assert run_model_scenario(fake, SHADOW_PARAMS).final == PageCounts(0, 8, 0)


def test_every_recorded_kernel_row_matches_the_model(recorded):
    assert len(recorded) == len(CHECK_MATRIX)
    bad = []
    for name, h in recorded.items():
        row = compare_results(h, run_model_scenario(h.scenario, host=h))
        if row.match is False:
            bad.append(f"{name}: {row.mismatches}")
    assert not bad, "\n".join(bad)
