"""KVM selftests as model scenarios (tdpsim.scenarios.selftests), with the asserts the
selftests make, and the recorded runs of the real selftests in the QEMU oracle
(tests/kvmcheck/data/oracle/selftests/<release>.jsonl, built from linux-source-6.12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tdpsim.model.profile import KERNEL_6_1, KERNEL_6_12
from tdpsim.scenarios.selftests import dirty_log_page_splitting_test, nx_huge_pages_test

DATA = Path(__file__).parent / "data" / "oracle" / "selftests"
PROFILES = [KERNEL_6_1, KERNEL_6_12]


def _recorded(release: str) -> dict[str, dict]:
    return {json.loads(line)["name"]: json.loads(line)
            for line in (DATA / f"{release}.jsonl").read_text().splitlines()}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("disable", [False, True], ids=["nx", "nx-disabled"])
def test_nx_huge_pages_test_asserts_hold_in_the_model(profile, disable):
    run = nx_huge_pages_test(profile, disable_nx_huge_pages=disable)
    assert len(run.checks) == 16 and run.passed, run.failures()


def test_nx_huge_pages_test_counts_step_by_step():
    run = nx_huge_pages_test(KERNEL_6_12)
    got = [(c.stage, c.left) for c in run.checks]
    assert got[4:8] == [("GUEST_SYNC(2): read hpage_2", 2), ("GUEST_SYNC(2): read hpage_2", 0),
                        ("GUEST_SYNC(3): call hpage_1", 1), ("GUEST_SYNC(3): call hpage_1", 1)]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_dirty_log_page_splitting_test_asserts_hold_in_the_model(profile):
    run = dirty_log_page_splitting_test(profile)
    assert len(run.checks) == 5 and run.passed, run.failures()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_dirty_log_page_splitting_test_with_manual_protect_and_initially_set(profile):
    """INITIALLY_SET: nothing split at enable, everything at the first CLEAR."""
    run = dirty_log_page_splitting_test(profile, manual_caps=True)
    assert len(run.checks) == 6 and run.passed, run.failures()


def test_the_real_selftests_pass_on_6_12_where_the_model_passes_them():
    rec = _recorded("6.12.117+deb12-amd64")
    nx = rec["nx_huge_pages_test"]
    assert nx["returncode"] == 0 and "Running test with CAP_SYS_BOOT enabled" in nx["stdout"]
    assert rec["set_memory_region_test"]["returncode"] == 0
    split = rec["dirty_log_page_splitting_test_thp"]
    assert split["returncode"] == 0
    assert all(nx_huge_pages_test(KERNEL_6_12, disable_nx_huge_pages=d).passed for d in (0, 1))


def test_the_6_12_selftests_skip_on_6_1_for_want_of_set_user_memory_region2():
    rec = _recorded("6.1.0-50-amd64")
    assert {n: r["returncode"] for n, r in rec.items()} == {
        "nx_huge_pages_test": 4, "dirty_log_page_splitting_test": 4,
        "set_memory_region_test": 4}                                   # KSFT_SKIP
    assert all("require KVM_SET_USER_MEMORY_REGION2 (introduced in v6.8)" in r["stdout"]
               for r in rec.values())
