"""Every command's output rendered at 80 and at 200 columns: nothing wider than the
terminal, no value cut or split across lines, and the wide terminal used (side-by-side
layouts where they fit).  (``compare``/``run``'s comparison table belongs to
report/table.py and is checked by its owner's tests.)"""

from __future__ import annotations

import re

import pytest

from conftest import GOLDEN

WIDTHS = (80, 200)


def _lines(r, width: int, quoted_ok: bool = False) -> list[str]:
    assert r.exit_code in (0, 1), r.output
    lines = r.stdout.splitlines()
    # quoted trace lines stay whole on purpose (copy-paste, grep)
    wide = [ln for ln in lines if len(ln) > width and not (quoted_ok and ln.startswith("    "))]
    assert not wide, wide
    return lines


def _intact(text: str, *values: str) -> None:
    """Each value present; a phrase may wrap between words, a word never breaks."""
    words = " ".join(text.split())
    for v in values:
        assert v in words, v


@pytest.mark.parametrize("width", WIDTHS)
def test_seed(tdpsim, width):
    r = tdpsim("seed", "--dump", columns=width)
    lines = _lines(r, width)
    _intact(r.stdout, "mirror-unpatched", "mirror-seamcall", "512 / 0 / 0",
            "TDX_EPT_INVALID_PROMOTE_CONDITIONS", "set_external_spte_present")
    header = [ln for ln in lines if "mirror-patched" in ln and "direct" in ln]
    # wide: one side-by-side table; narrow: one stacked block per variant
    assert bool(header) == (width == 200)


@pytest.mark.parametrize("width", WIDTHS)
def test_fault(tdpsim, width):
    r = tdpsim("fault", "0x400", "0x600:x", "0x800:r", "--tdx", columns=width)
    _lines(r, width)
    _intact(r.stdout, "fault gfn 0x400 (w, private) → RET_PF_FIXED", "0x8600002000400bb7",
            "0x400-0x5ff", "mirror root l4", "pages_2m 3", "remote_tlb_flush_requests 0")
    rows = [ln for ln in r.stdout.splitlines() if "0x400-0x5ff" in ln]
    assert rows and all(re.search(r"leaf pfn=0x2000400", ln) for ln in rows)


@pytest.mark.parametrize("width", WIDTHS)
def test_policies(tdpsim, width):
    from tdpsim.sim import PRESETS
    r = tdpsim("policies", columns=width)
    lines = _lines(r, width)
    _intact(r.stdout, *PRESETS, "mirror_promotion=disallowed", "lpage_check_first=False")
    head = next(ln for ln in lines if "┃ preset" in ln)
    assert ("switches" in head and "models" in head) if width == 200 else "models" in head
    for name in PRESETS:  # each preset's name alone in its column, never folded
        assert any(re.match(rf"│ {re.escape(name)} +│", ln) for ln in lines), name


@pytest.mark.parametrize("command", ["workloads", "scenarios"])
@pytest.mark.parametrize("width", WIDTHS)
def test_listings(tdpsim, command, width):
    from tdpsim.explore.scenario import builtin_names as scenario_names
    from tdpsim.sim import builtin_names
    names = builtin_names() if command == "workloads" else scenario_names()
    lines = [ln for ln in _lines(tdpsim(command, columns=width), width) if ln.strip()]
    assert [ln.split()[0] for ln in lines if not ln.startswith(" ")] == names
    if width == 200:
        assert len(lines) == len(names)


@pytest.fixture(scope="module")
def schedule(tmp_path_factory):
    from typer.testing import CliRunner
    from tdpsim.cli.main import app
    out = tmp_path_factory.mktemp("sched") / "s.json"
    r = CliRunner().invoke(app, ["explore", "seed_promotion", "-p",
                                 "policy.mirror_promotion=unpatched", "-n", "100", "-o",
                                 str(out)])
    assert r.exit_code == 1, r.output
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_replay_diagram_fits(tdpsim, schedule, width):
    r = tdpsim("replay", schedule, columns=width)
    lines = _lines(r, width)
    head = next(ln for ln in lines if ln.startswith("step"))
    cols = [m.start() for m in re.finditer(r"\S+", head)][1:]
    assert len(cols) >= 2 and cols[-1] < width  # every thread's column starts on screen
    assert any("FAILURE at step" in ln for ln in lines)
    if width == 200:  # the room is used: wider columns, fewer cut cells
        narrow = tdpsim("replay", schedule, columns=80).stdout
        assert r.stdout.count("~") < narrow.count("~")


@pytest.mark.parametrize("width", WIDTHS)
def test_explore(tdpsim, width):
    r = tdpsim("explore", "seed_2vcpu", "-s", "dfs", "-n", "50", columns=width)
    _lines(r, width)
    _intact(r.stdout, "seed_2vcpu", "exhausted:", "distinct final states")


@pytest.mark.parametrize("width", WIDTHS)
def test_replay_trace(tdpsim, width):
    r = tdpsim("replay-trace", GOLDEN / "bad_old_spte_mismatch.txt", columns=width)
    _lines(r, width, quoted_ok=True)
    _intact(r.stdout, "pages_4k / 2m / 1g", "old_spte_mismatch",
            "bad_old_spte_mismatch.txt:20:", "old_spte 8600002000999b77")
