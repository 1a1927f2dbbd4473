"""DPOR split into subtrees: the same executions serially, with --jobs, resumed from a
checkpoint; the split costs only sleep-blocked (empty-subtree) executions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdpsim.explore import DporScheduler, explore, load_scenario
from tdpsim.explore.campaign import CampaignSpec, run_campaign

UNPATCHED = {"policy.mirror_promotion": "unpatched"}
# Three threads that exhaust in a test's time (nx_recovery itself no longer does since the
# RCU, vCPU-mode and sp->nx footprints of tracking.py).
NX_FAR = str(Path(__file__).parent / "data" / "nx_recovery_far.toml")


def _totals(x) -> tuple:
    return (x.executions, x.pruned, x.states, x.traces, x.failures)


def test_split_campaign_identical_serial_jobs_and_scheduler():
    spec = CampaignSpec("seed_2vcpu", UNPATCHED, "dpor", executions=10**5,
                        stop_on_failure=False)
    serial = run_campaign(spec, jobs=1)
    parallel = run_campaign(spec, jobs=2)
    plain = explore(load_scenario("seed_2vcpu", UNPATCHED),
                    DporScheduler(eager_depth=spec.split_depth), stop_on_failure=False)
    assert _totals(serial) == _totals(parallel) == _totals(plain)
    assert (serial.executions, serial.pruned) == (3, 0)
    assert serial.exhausted and parallel.exhausted
    assert len(serial.failures) == 1
    assert next(iter(serial.failures)).startswith("KVM_BUG: KVM_BUG_ON in "
                                                  "set_external_spte_present")


def test_split_costs_only_empty_subtrees():
    sc = load_scenario(NX_FAR, {})
    optimal = explore(sc, DporScheduler())
    split = run_campaign(CampaignSpec(NX_FAR, {}, "dpor", executions=10**5))
    assert (optimal.executions, optimal.pruned) == (1408, 16)
    assert (split.executions, split.pruned) == (1413, 21)
    # Every trace once either way; same final states.
    assert optimal.executions - optimal.pruned == split.executions - split.pruned
    assert optimal.states == split.states


def test_split_depth_zero_is_the_optimal_run():
    spec = CampaignSpec("seed_2vcpu", {}, "dpor", executions=10**5, split_depth=0)
    assert spec.chunks() == [("prefix",)]
    st = run_campaign(spec)
    assert (st.executions, st.pruned) == (12, 0)


def test_dpor_campaign_resumes_without_loss_or_repeat(tmp_path):
    spec = CampaignSpec(NX_FAR, {}, "dpor", executions=10**5)
    full = run_campaign(spec)
    ck = tmp_path / "ck.json"
    ran: list = []

    class Kill(Exception):
        pass

    def on_chunk(state, r):
        ran.append((tuple(r.chunk), r.executions))
        if sum(n > 0 for _, n in ran) == 2:
            raise Kill

    with pytest.raises(Kill):
        run_campaign(spec, checkpoint=ck, on_chunk=on_chunk)
    before = sum(n for _, n in ran)
    resumed = run_campaign(spec, checkpoint=ck,
                           on_chunk=lambda s, r: ran.append((tuple(r.chunk), r.executions)))
    chunks = [c for c, _ in ran]
    assert len(chunks) == len(set(chunks)) == len(spec.chunks())
    assert _totals(resumed) == _totals(full)
    assert (full.executions, full.pruned) == (1413, 21)
    # The resumed run's rate counts only what it ran itself.
    assert resumed.restored[0] == before > 0
    assert resumed.executions_run == full.executions - before
