"""Session 8: a TD guest's 4K ACCEPT racing another vCPU's fault in the same 2M range (HP-v3
huge pages).  ``tdx_honor_guest_accept_level`` must split the range and set GUEST_INHIBIT in
one write-locked section: a fault in between maps the 2M leaf, and the vCPU whose ACCEPT
asked for 4K then meets it with a 4K goal level and tries to split it under the shared lock
(``tdx_sept_split_private_spte``'s WARN_ON_ONCE, -EOPNOTSUPP).  No built-in raced an ACCEPT
exit with another vCPU's fault before ``td_accept_4k_fault_2m``."""

from __future__ import annotations

from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.model import kvm_main, tdx
from tdpsim.model.tdx import KvmTdx


def _inhibit_after_unlock(monkeypatch):
    # tdx_honor_guest_accept_level setting GUEST_INHIBIT only after its write_unlock.
    real = KvmTdx.tdx_honor_guest_accept_level
    deferred: list = []

    def honor(self, vcpu, gfn, eeq):
        ret = real(self, vcpu, gfn, eeq)
        while deferred:
            kvm_main.hugepage_set_guest_inhibit(*deferred.pop(0))
        return ret

    monkeypatch.setattr(tdx, "hugepage_set_guest_inhibit",
                        lambda slot, gfn, level: deferred.append((slot, gfn, level)))
    monkeypatch.setattr(KvmTdx, "tdx_honor_guest_accept_level", honor)


def test_inhibit_after_unlock_lets_a_fault_map_2m_over_a_4k_accept(monkeypatch):
    _inhibit_after_unlock(monkeypatch)
    rep = explore(load_scenario("td_accept_4k_fault_2m"),
                  PctScheduler(seed=0, depth=3, executions=200))
    f = rep.failure.failure
    assert (rep.failure_index + 1, f.kind, f.thread) == (53, "WARN", "vcpu0")
    assert f.message == ("WARN_ON_ONCE in tdx_sept_split_private_spte: split of a mirror SPTE "
                         "under the shared lock")


def test_td_accept_4k_fault_2m_is_clean():
    # Exhaustive DPOR does not end within 20,000 executions (~100 steps each; ~1,100 before
    # the local retry loop kept SRCU and parked inside tdx_handle_ept_violation).
    sc = load_scenario("td_accept_4k_fault_2m")
    rep = explore(sc, DporScheduler(max_executions=30))
    assert rep.failure is None and (rep.executions, rep.steps) == (30, 2979)
    rep = explore(sc, PctScheduler(seed=0, executions=200))
    assert rep.failure is None and (rep.executions, rep.steps) == (200, 17225)
