"""Golden traces (Casemate style): ``good_*.txt`` must replay without anomalies,
``bad_*.txt`` must produce exactly the anomalies their header announces, each pointing at
the right line with its text."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdpsim.model.policy import Policy
from tdpsim.trace.replay import ReplayOptions, replay_trace

GOLDEN = Path(__file__).parent / "golden"
FILES = sorted(GOLDEN.glob("*.txt"))


def _header(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(":")
        if sep and key in ("expect", "expect-pages", "expect-counter", "options"):
            out.setdefault(key, []).extend(value.split())
    return out


def _options(hdr: dict[str, list[str]]) -> ReplayOptions:
    kw: dict[str, object] = {}
    for item in hdr.get("options", []):
        k, _, v = item.partition("=")
        kw[k] = {"true": True, "false": False}.get(v, v)
    return ReplayOptions(policy=Policy(**kw))  # type: ignore[arg-type]


def test_golden_files_exist():
    names = {p.name for p in FILES}
    assert {"good_direct_promotion.txt", "bad_mirror_promotion.txt",
            "bad_old_spte_mismatch.txt", "good_split.txt"} <= names
    assert all(n.startswith(("good_", "bad_")) for n in names)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden(path: Path):
    hdr = _header(path)
    result = replay_trace(path, _options(hdr))
    got = sorted((a.kind, a.lineno) for a in result.anomalies)
    expected = sorted((k, int(n)) for k, _, n in (e.partition("@") for e in hdr.get("expect", [])))
    if path.name.startswith("good_"):
        assert got == [], "\n".join(map(str, result.anomalies))
    else:
        assert expected, "a bad_ trace must announce its anomalies"
        assert got == expected, "\n".join(map(str, result.anomalies))
        lines = path.read_text().splitlines()
        for a in result.anomalies:
            first = a.lines[0]
            assert first.filename == str(path)
            assert first.text == lines[first.lineno - 1]
            assert all(r.text is not None for r in a.lines)
    if "expect-pages" in hdr:
        assert result.pages == [int(x) for x in hdr["expect-pages"]]
    for item in hdr.get("expect-counter", []):
        k, _, v = item.partition("=")
        assert result.counters[k] == int(v), k


def test_mirror_level_is_fine_with_hp_v3():
    """The 2M mirror leaf of bad_mirror_level.txt is legal with HP-v3 (the default)."""
    result = replay_trace(GOLDEN / "bad_mirror_level.txt")
    assert result.ok and result.pages == [0, 1, 0]


def test_mirror_promotion_allowed_under_seamcall():
    """The hypothetical promoting KVM (mirror_promotion='seamcall') may promote."""
    opts = ReplayOptions(policy=Policy(mirror_promotion="seamcall"))
    result = replay_trace(GOLDEN / "bad_mirror_promotion.txt", opts)
    assert result.anomaly_counts == {}
    assert result.counters["mirror_promotions"] == 1


def test_mirror_promotion_message_names_the_policy():
    result = replay_trace(GOLDEN / "bad_mirror_promotion.txt")
    (a,) = result.anomalies
    assert "disallowed" in a.message and "0x200" in a.message
    assert "kvm_tdp_mmu_spte_changed" in a.lines[0].text
