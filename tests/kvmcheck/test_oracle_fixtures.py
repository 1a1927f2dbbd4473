"""The model against the recorded QEMU oracle (no QEMU here): every recorded row of every
kernel must match the model on stats and on the event stream, except the rows listed in
KNOWN_GAPS with the kernel behaviour the model lacks.  The lists are exact: a gap the model
closes fails the test too, so the list is kept honest.

Fixtures: tests/kvmcheck/data/oracle/<release>/ (facts.json with the kernel release and
command line, rows.jsonl, traces/*.trace.xz), written by benchmarks/oracle_record.py;
tiny-<release>/ is the small 6.12 build with KVM_X86_SW_PROTECTED_VM (kernel.config.xz is
the .config it was built with), whose matrix adds the private-memory rows.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

import lzma

from tdpsim.kvmcheck.compare import ORACLE_MATRIX, PRIVATE_MATRIX
from tdpsim.kvmcheck.host_matrix import PRIVATE_ROWS
from tdpsim.kvmcheck.oracle import check_run

DATA = Path(__file__).parent / "data" / "oracle"
KERNELS = sorted(p.name for p in DATA.iterdir() if (p / "rows.jsonl").exists()) if DATA.exists() else []

#: row -> (stats gap, events gap) per kernel series: the kernel behaviour the model lacks.
#: (dirty-log-disable-again and dirty-log-no-eager-split-disable match since the 6.1/6.12
#: profiles zap collapsible SPTEs and refault, KernelProfile.recover_huge_pages_in_place;
#: dirty-log-initially-set since the model has KVM_DIRTY_LOG_INITIALLY_SET;
#: nx-force-read-then-exec on 6.12 since the profile has no early RET_PF_SPURIOUS in
#: tdp_mmu_map_handle_target_level, KernelProfile.tdp_mmu_map_spurious_if_access_allowed.)
KNOWN_GAPS: dict[str, dict[str, tuple]] = {
    "6.1": {},
    "6.12": {},
}


def _series(release: str) -> str:
    return ".".join(release.split(".")[:2])


@lru_cache(maxsize=None)
def _checked(release: str):
    # the small 6.12 build's traces are also replayed (its test asserts 0 anomalies)
    return check_run(DATA / release, PRIVATE_MATRIX, replay=release.startswith(TINY))


#: fixture directory suffix of the runs with a 5-level NPT root (-cpu max: LA57)
LA57 = "-la57"
#: fixture directory prefix of the small 6.12 build with KVM_X86_SW_PROTECTED_VM
TINY = "tiny-"


def _release(fixture: str) -> str:
    fixture = fixture[len(TINY):] if fixture.startswith(TINY) else fixture
    return fixture[:-len(LA57)] if fixture.endswith(LA57) else fixture


def test_fixtures_hold_both_debian_kernels_with_at_least_25_rows():
    series = {_series(k): k for k in KERNELS if not k.endswith(LA57) and not k.startswith(TINY)}
    assert {"6.1", "6.12"} <= set(series)
    for k in series.values():
        run, rows = _checked(k)
        assert run.facts["kernel_release"] == k and run.facts["npt_root_level"] == 4
        assert "console=ttyS0" in run.facts["cmdline"]
        assert run.facts["kvm_params"]["tdp_mmu"] == "Y"
        assert run.facts["kvm_amd_params"]["npt"] == "Y"
        assert len(rows) >= 25 and not [r.error for r in rows if r.error]


@pytest.mark.parametrize("release", KERNELS)
def test_every_row_matches_on_stats_and_events_but_the_listed_gaps(release):
    _, rows = _checked(release)
    names = {r.name for r in rows}
    gaps = {n: g for n, g in KNOWN_GAPS.get(_series(_release(release)), {}).items() if n in names}
    stats_bad = {r.name for r in rows if r.stats_match is False}
    events_bad = {r.name for r in rows if r.events_match is False}
    assert stats_bad == {n for n, (s, _e) in gaps.items() if s}, \
        "\n".join(m for r in rows for m in (r.stats.mismatches if r.stats else ()))
    assert events_bad == {n for n, (_s, e) in gaps.items() if e}, \
        "\n".join(f"{r.name}: {m}" for r in rows for m in r.event_mismatches)
    # every row that ran compared events, and nothing was lost from the trace buffer
    assert all(r.events_compared > 0 and r.trace_overruns == 0 for r in rows
               if r.stats is not None and not r.stats.skipped)


def test_the_fixture_rows_are_the_oracle_matrix():
    for k in KERNELS:
        names = [json.loads(line)["name"] for line in
                 (DATA / k / "rows.jsonl").read_text().splitlines()]
        if k.endswith(LA57):
            assert set(names) <= {s.name for s in ORACLE_MATRIX} and len(names) >= 5
        elif k.startswith(TINY):
            assert names == [s.name for s in PRIVATE_MATRIX]
        else:
            assert names == [s.name for s in ORACLE_MATRIX]


def test_la57_runs_have_five_level_roots_in_kernel_and_model():
    la57 = [k for k in KERNELS if k.endswith(LA57)]
    assert {_series(_release(k)) for k in la57} == {"6.1", "6.12"}
    for k in la57:
        run, rows = _checked(k)
        assert run.facts["kernel_release"] == _release(k) and run.facts["npt_root_level"] == 5
        first = json.loads((DATA / k / "rows.jsonl").read_text().splitlines()[0])
        assert first["kernel_phases"] and all(r.events_compared for r in rows)


def test_the_small_6_12_build_ran_every_row_private_memory_included():
    """The software-protected VM type, a guest_memfd slot, KVM_SET_MEMORY_ATTRIBUTES both
    ways, PUNCH_HOLE and KVM_PRE_FAULT_MEMORY: every row ran (none skipped), matched, and
    its trace replays through the 6.12 profile with no anomaly."""
    tiny = [k for k in KERNELS if k.startswith(TINY)]
    assert tiny == ["tiny-6.12.117"]
    run, rows = _checked(tiny[0])
    assert run.facts["kernel_release"] == "6.12.117" and run.facts["npt_root_level"] == 4
    assert "tsc_early_khz=" in run.facts["cmdline"]          # no ACPI: see qemu.tsc_calibration_args
    config = lzma.decompress((DATA / tiny[0] / "kernel.config.xz").read_bytes()).decode()
    assert "CONFIG_KVM_SW_PROTECTED_VM=y" in config.splitlines()
    assert len(rows) == len(PRIVATE_MATRIX) >= 25 and not [r.error for r in rows if r.error]
    ran = {r.name for r in rows if r.stats is not None and not r.stats.skipped}
    assert {s.name for s in PRIVATE_ROWS} <= ran
    assert {r.name: r.replay_anomalies for r in rows} == {r.name: 0 for r in rows}
