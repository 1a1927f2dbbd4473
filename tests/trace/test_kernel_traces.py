"""Real traces from older kernels and an AMD NPT host replay clean under the profile and
vendor inferred from them, and a planted inconsistency in each is still caught.

The captures are the oracle's (issue 12): Debian 6.1.192 and 6.12.117 running KVM's TDP
MMU (kvm_amd npt=1) under QEMU TCG, committed xz'd under tests/kvmcheck/data/oracle/.
"""

from __future__ import annotations

import io
import lzma
from pathlib import Path

import pytest

from tdpsim.model.profile import KERNEL_6_1, KERNEL_6_18_HP_V3
from tdpsim.trace.infer import infer_kernel
from tdpsim.trace.replay import ReplayOptions, replay_trace

DATA = Path(__file__).parents[1] / "kvmcheck" / "data" / "oracle"
R61, R612 = "6.1.0-50-amd64", "6.12.117+deb12-amd64"


def _lines(release: str, row: str) -> list[str]:
    path = DATA / release / "traces" / f"{row}.trace.xz"
    return lzma.decompress(path.read_bytes()).decode().splitlines(keepends=True)


def _replay(lines: list[str], **opts) -> object:
    return replay_trace(io.StringIO("".join(lines)), ReplayOptions(**opts))


CASES = [
    # 6.1: zap collapsible via the traced freeze, dirty logging, fast_page_fault fixes
    (R61, "dirty-log-disable-again", "6.1"),
    # 6.1: the fault path zaps a 2M leaf (no split on fault) for the NX workaround
    (R61, "nx-force-read-then-exec", "6.1"),
    (R61, "dirty-log-no-eager-split", "6.1"),
    # 6.12: BIT(63) non-present, zap after write, split on fault, u64 error codes
    (R612, "dirty-log-disable-again", "6.18+hp-v3"),
    (R612, "dirty-log-no-eager-split", "6.18+hp-v3"),
]


@pytest.mark.parametrize("release,row,kernel", CASES)
def test_real_trace_replays_clean_under_the_inferred_kernel(release, row, kernel):
    lines = _lines(release, row)
    res = _replay(lines)
    assert (res.kernel, res.vendor) == (kernel, "amd")
    assert res.anomaly_counts == {}, res.anomalies[:3]
    assert res.pages == [0, 0, 0]  # every capture ends with the VM torn down
    inf = res.inference
    assert inf is not None and inf.root_level == 4  # -cpu max,-la57
    if release == R612:
        assert inf.candidates == ("6.12", "6.18+hp-v3")  # same values on a non-TD host
    else:
        assert inf.candidates == ("6.1",)
        assert res.counters["atomic_zaps"] > 0  # tdp_mmu_zap_spte_atomic's traced freezes


@pytest.mark.parametrize("release,row,wrong", [
    (R61, "dirty-log-disable-again", KERNEL_6_18_HP_V3),
    (R612, "dirty-log-disable-again", KERNEL_6_1),
])
def test_the_other_generation_does_not_fit_them(release, row, wrong):
    """The fields matter: each trace under the other generation's values is not clean."""
    res = _replay(_lines(release, row), profile=wrong, vendor="amd")
    assert res.anomaly_total > 0


def test_6_1_symbolic_u32_and_6_12_u64_fast_page_fault_error_codes():
    old = "".join(_lines(R61, "dirty-log-no-eager-split"))
    new = "".join(_lines(R612, "dirty-log-no-eager-split"))
    assert "error_code P|W|U sptep" in old and "|0x100000000" not in old
    assert "error_code P|W|U|0x100000000 sptep" in new


def _plant(lines: list[str], match: str, edit) -> tuple[list[str], int]:
    """Apply ``edit`` to the first line containing ``match``; return lines and its lineno."""
    for i, line in enumerate(lines):
        if match in line:
            out = list(lines)
            out[i] = edit(line)
            return out, i + 1
    raise AssertionError(f"no line with {match!r}")


def test_planted_inconsistency_in_a_6_1_trace_is_caught():
    """Drop one child freeze of a removed 4K table: its leaf leaks (zap_leak)."""
    lines = _lines(R61, "dirty-log-disable-again")
    i = next(n for n, ln in enumerate(lines) if "kvm_mmu_prepare_zap_page" in ln)
    child = next(n for n in range(i, len(lines)) if " level 1 old_spte " in lines[n]
                 and lines[n].rstrip().endswith("new_spte 5a0"))
    res = _replay(lines[:child] + lines[child + 1:])
    assert res.kernel == "6.1" and set(res.anomaly_counts) == {"zap_leak"}


def test_planted_inconsistency_in_an_npt_trace_is_caught():
    """Change the pfn a 4K install maps in a 6.12 NPT trace: the next change of that SPTE
    no longer matches (old_spte_mismatch), and kvm_mmu_set_spte disagrees."""
    lines = _lines(R612, "dirty-log-no-eager-split")
    target = next(ln for ln in lines if " level 1 old_spte 8000000000000000 new_spte " in ln)
    new = target.rsplit("new_spte ", 1)[1].strip()
    bad = f"{int(new, 16) ^ 0x1000:x}"
    planted, ln = _plant(lines, target, lambda t: t.replace(f"new_spte {new}", f"new_spte {bad}"))
    res = _replay(planted)
    assert res.kernel == "6.18+hp-v3" and res.vendor == "amd"
    assert res.anomaly_counts.get("set_spte_mismatch") == 1
    assert res.anomalies[0].lineno == ln + 1  # the kvm_mmu_set_spte right after it


def test_generation_not_inferred_names_the_evidence_seen():
    lines = [ln for ln in _lines(R61, "aligned") if "kvm_tdp_mmu_spte_changed" not in ln]
    inf = infer_kernel(lines)
    assert inf.profile is None and inf.vendor is None
    text = inf.describe()
    assert text.startswith("kernel generation not inferred (scanned ")
    assert "0 kvm_tdp_mmu_spte_changed" in text and "root page at level 4" in text
    res = replay_trace(io.StringIO("".join(lines)))
    assert res.kernel == KERNEL_6_18_HP_V3.name  # falls back to the default, and says so


def test_contradicting_values_are_reported():
    lines = _lines(R61, "aligned")
    installs = [n for n, t in enumerate(lines) if " level 1 old_spte 0 new_spte " in t]
    ln = installs[1] + 1  # the second 4K install claims the 6.10+ non-present value
    flipped = list(lines)
    flipped[ln - 1] = lines[ln - 1].replace("old_spte 0 ", "old_spte 8000000000000000 ")
    inf = infer_kernel(flipped, stop_when_decided=False)
    assert inf.profile is None
    assert f"line {ln}: an install over old_spte 8000000000000000 contradicts" in inf.conflicts[0]


def test_kernel_given_overrides_the_inference():
    res = _replay(_lines(R61, "aligned"), profile=KERNEL_6_1, vendor="amd")
    assert res.inference is None and res.anomaly_counts == {}
