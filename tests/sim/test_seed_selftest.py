"""The seed-selftest workload: where the seed patch's variants differ, with exact counts."""

import pytest

from tdpsim.sim import builtin_workload, simulate

KEYS = ("promote.opportunities", "hugepage_adjust.lowered.mirror", "promote.tried",
        "promote.done", "promote.lost_2m_mib", "bugs", "hugepage_adjust.calls.direct")


@pytest.fixture(scope="module")
def runs():
    wl = builtin_workload("seed-selftest")
    return {p: simulate(wl, p) for p in wl.presets}


@pytest.mark.parametrize("preset,want", [
    ("hp3-seed", (4, 4, 0, 0, 8, 0, 0)),
    ("hp3-rfc-v1", (4, 4, 0, 0, 8, 0, 0)),
    # v3 as posted walks every TD fault through the adjust, direct root too.
    ("hp3-v3-posted", (4, 4, 0, 0, 8, 0, 48)),
    # The first touch promotes the mirror table under the read lock: KVM_BUG_ON on the
    # invalid mirror transition and on each present child of the table (HP-v3 09/24); the
    # run stops there, the mirror holding a 2M leaf the S-EPT never got (0 MiB left small).
    ("hp3-no-patch", (1, 0, 0, 0, 0, 515, 0)),
    # 511 MAPPED + 1 FREE children: the module refuses every PROMOTE.
    ("hp3-promoting", (4, 0, 4, 0, 8, 0, 0)),
])
def test_exact_counts(runs, preset, want):
    assert tuple(runs[preset].totals.get(k, 0) for k in KEYS) == want


def test_only_the_touch_before_accept_phase_has_opportunities(runs):
    r = runs["hp3-seed"]
    assert {p.name: p.counters.get("promote.opportunities", 0) for p in r.phases} == {
        "accept-2m": 0, "in-place": 0, "touch-before-accept": 4, "discard": 0,
        "touch-after-discard": 0, "in-place-2": 0, "accept-then-touch": 0,
        "touch-accepted": 0}
    assert r.phase("accept-then-touch").counters["accept.4k_exits"] == 4


def test_promote_failure_status(runs):
    t = runs["hp3-promoting"].totals
    assert t["promote.failed.TDX_EPT_INVALID_PROMOTE_CONDITIONS|RCX"] == 4
    assert runs["hp3-no-patch"].status.startswith("VM bugged/dead in phase 'touch-before-accept'")
