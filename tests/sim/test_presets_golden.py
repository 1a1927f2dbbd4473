"""Exact counts for small workloads under every policy preset (golden values: any change
in the model or the engine that moves a number must update them knowingly)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "sim"))

import pytest

from tdpsim.sim import PRESETS, loads_workload, simulate

from sim_small_workloads import SMALL_TD, SMALL_VM

KEYS = ["pages_4k", "pages_2m", "mappings_2m", "ept_violations", "pf.taken", "pf.fixed",
        "pf.spurious", "pf.retry", "pf.fast", "mmu_lock.write", "mmu_lock.read",
        "tlb.remote_flush_requests", "nx.lpage_splits", "nx.recovered",
        "accept.4k_where_2m_possible", "accept.4k_exits", "accept.2m_exits",
        "tdx.accept_level_write_locks", "track", "seamcall.MEM.PAGE.AUG",
        "seamcall.MEM.PAGE.DEMOTE", "seamcall.MEM.PAGE.REMOVE", "bugs"]

_TD_HUGE = (2048, 10, 10, 2048, 2048, 2048, 0, 0, 0, 28, 2068, 6, 0, 0, 2032, 2032, 10, 4,
            0, 2042, 0, 0, 0)
GOLDEN_TD = {
    "hp3-seed": _TD_HUGE,
    "hp3-rfc-v1": _TD_HUGE,
    "hp3-v3-posted": _TD_HUGE,
    "hp3-no-patch": _TD_HUGE,
    "hp3-promoting": _TD_HUGE,
    "upstream-4k": (7168, 0, 0, 7158, 7158, 7158, 0, 0, 0, 38, 7178, 6, 0, 0, 0, 7142, 10, 14, 0,
                7152, 0, 0, 0),
    "nx-off": _TD_HUGE,
    "lpage-check-first": _TD_HUGE,
    # The RFC form: every ACCEPT exit (2032 4K + 10 2M) takes the write lock.
    "no-lpage-check-first": (2048, 10, 10, 2048, 2048, 2048, 0, 0, 0, 2066, 2068, 6, 0, 0,
                             2032, 2032, 10, 2042, 0, 2042, 0, 0, 0),
    # Yan Zhao's 2025-06 draft: 2M ACCEPT exits never lock; the 4 frames with 4K exits
    # take it once each with the pre-check, every one of the 2032 4K exits without.
    "draft-lpage-check-first": _TD_HUGE,
    "draft-no-lpage-check-first": (2048, 10, 10, 2048, 2048, 2048, 0, 0, 0, 2056, 2068, 6, 0,
                                   0, 2032, 2032, 10, 2032, 0, 2042, 0, 0, 0),
}
# mmu_lock.read counts kvm_mmu_slot_apply_flags' eager split and write-protect as two
# read-lock sections (kvm_mmu_slot_try_split_huge_pages, kvm_mmu_slot_remove_write_access).
_VM_NX = (0, 2, 10, 45, 45, 38, 7, 0, 0, 0, 52, 3, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0)
GOLDEN_VM = {
    "hp3-seed": _VM_NX, "hp3-rfc-v1": _VM_NX, "hp3-v3-posted": _VM_NX,
    "hp3-no-patch": _VM_NX, "hp3-promoting": _VM_NX,
    "upstream-4k": (4096, 0, 0, 4126, 4126, 4126, 0, 0, 30, 0, 4102, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0),
    "nx-off": (0, 8, 16, 38, 38, 38, 0, 0, 30, 0, 22, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    "lpage-check-first": _VM_NX, "no-lpage-check-first": _VM_NX,
    "draft-lpage-check-first": _VM_NX, "draft-no-lpage-check-first": _VM_NX,
}


def test_golden_covers_every_preset():
    assert set(GOLDEN_TD) == set(PRESETS) == set(GOLDEN_VM)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_small_td_exact_counts(preset):
    r = simulate(loads_workload(SMALL_TD, "small-td"), preset)
    assert r.status == "ok"
    assert tuple(r.totals.get(k, 0) for k in KEYS) == GOLDEN_TD[preset]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_small_vm_exact_counts(preset):
    r = simulate(loads_workload(SMALL_VM, "small-vm"), preset)
    assert r.status == "ok"
    assert tuple(r.totals.get(k, 0) for k in KEYS) == GOLDEN_VM[preset]


def test_phase_deltas_sum_to_totals():
    r = simulate(loads_workload(SMALL_TD, "small-td"), "upstream")
    for key in ("ept_violations", "mappings_2m", "mmu_lock.write", "pf.taken"):
        assert sum(p.counters.get(key, 0) for p in r.phases) == r.totals[key]


def test_no_huge_maps_nothing_huge_and_accepts_at_4k():
    r = simulate(loads_workload(SMALL_TD, "small-td"), "no-huge")
    assert r.totals["pages_2m"] == 0
    # Each 2M ACCEPT meets a 4K mapping: PAGE_SIZE_MISMATCH, Linux falls back to 4K.
    assert r.totals["guest.size_mismatch_fallbacks"] > 0
