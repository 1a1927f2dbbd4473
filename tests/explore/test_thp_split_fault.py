"""The thp_split_fault scenario: faults racing the two halves of an mmu_notifier
invalidation."""

from __future__ import annotations

from tdpsim.explore import PctScheduler, RandomScheduler, explore, load_scenario
from tdpsim.model import mmu_fault


def test_clean_under_pct_and_random():
    sc = load_scenario("thp_split_fault")
    for strategy in (PctScheduler(seed=0, executions=40), RandomScheduler(seed=1, executions=40)):
        rep = explore(sc, strategy)
        assert rep.failure is None, rep.failure and rep.failure.failure


def test_without_the_in_progress_check_a_stale_2m_leaf_survives(monkeypatch):
    """Checking only mmu_invalidate_seq (as if the range were ignored) lets a fault that
    runs between start and end map 2M from the host's pre-split page table."""
    def seq_only(kvm, mmu_seq, gfn):
        return kvm.mmu_invalidate_seq != mmu_seq
    monkeypatch.setattr(mmu_fault, "mmu_invalidate_retry_gfn", seq_only)
    monkeypatch.setattr(mmu_fault, "mmu_invalidate_retry_gfn_unsafe", seq_only)
    sc = load_scenario("thp_split_fault")
    rep = explore(sc, PctScheduler(seed=0, executions=200))
    assert rep.failure is not None
    assert "stale after a host split" in str(rep.failure.failure)
