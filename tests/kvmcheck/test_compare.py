"""kvm-check: kernel vs model rows, the rules that make them agree, JSON, the CLI.

* ``test_live_matrix_every_row_matches`` runs the check matrix on /dev/kvm (skipped, with
  the reason, where KVM is unusable).
* ``test_knocking_out_a_rule_breaks_a_row`` patches one model rule out at a time and runs
  the model against the kernel counts recorded on this host
  (data/kvm_check_recorded.json), so it needs no /dev/kvm: each rule must be needed by at
  least one row, and the rows named for it must be among those that break.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import tdpsim.kvmcheck.model_side as model_side
import tdpsim.model.shadow_mmu as shadow_mmu
from tdpsim.cli import kvm_check as cli
from tdpsim.kvmcheck.compare import (CHECK_MATRIX, compare_results, load_report,
                                     recording_text, report_to_json, run_kvm_check)
from tdpsim.kvmcheck.guest import PAGE_2M
from tdpsim.kvmcheck.host_matrix import PageCounts
from tdpsim.kvmcheck.model_side import run_model_scenario
from tdpsim.kvmcheck.vm import KvmError, KvmSystem, KvmUnavailable
from tdpsim.model.memslot import HostBacking, KvmMemorySlot
from tdpsim.model.spte import KVM_MAX_HUGEPAGE_LEVEL, KVM_PAGES_PER_HPAGE, PAGE_SHIFT, PG_LEVEL_2M

RECORDED = Path(__file__).parent / "data" / "kvm_check_recorded.json"


def _kvm_reason():
    try:
        with KvmSystem() as kvm, kvm.create_vm():
            pass
    except (KvmUnavailable, KvmError) as e:
        return str(e)
    return None


_REASON = _kvm_reason()
needs_kvm = pytest.mark.skipif(_REASON is not None, reason=f"/dev/kvm unusable: {_REASON}")


@pytest.fixture(scope="module")
def recorded():
    return load_report(RECORDED.read_text())


def _rows(recorded):
    return {h.scenario.name: compare_results(h, run_model_scenario(h.scenario, host=h))
            for h in recorded}


# --------------------------------------------------------------------------------------
# live
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live_rows():
    if _REASON is not None:
        pytest.skip(f"/dev/kvm unusable: {_REASON}")
    return run_kvm_check(CHECK_MATRIX, repeats=2)


@needs_kvm
def test_live_matrix_every_row_matches(live_rows):
    assert [r.name for r in live_rows] == [s.name for s in CHECK_MATRIX]
    bad = [f"{r.name}: {r.mismatches}" for r in live_rows if r.match is False]
    assert not bad, "\n".join(bad)
    ran = [r for r in live_rows if not r.skipped]
    assert len(ran) >= len(CHECK_MATRIX) - 1        # only hugetlb may lack its pool
    assert all(r.native.took_effect for r in ran)


@needs_kvm
def test_live_matrix_agrees_with_the_recording(live_rows, recorded):
    rec = {h.scenario.name: h for h in recorded}
    for r in live_rows:
        if r.skipped or rec[r.name].skipped:
            continue
        assert r.kernel == rec[r.name].final, r.name
        assert r.kernel_pf_fixed == sum(p.counters.get("pf_fixed", 0) for p in rec[r.name].phases)


# --------------------------------------------------------------------------------------
# the recorded kernel counts: the model matches, and every rule is needed
# --------------------------------------------------------------------------------------
def test_recording_describes_a_shadow_paging_host():
    doc = json.loads(RECORDED.read_text())
    assert doc["kvm_params"]["tdp_mmu"] == "N" and doc["mmu_model"] == "shadow"
    assert "kvm_pvm" in doc["vendor_modules"]


def test_recorded_rows_all_match(recorded):
    rows = _rows(recorded)
    assert [n for n, r in rows.items() if r.match is False] == []
    assert rows["hugetlb-2m"].match is None or rows["hugetlb-2m"].match


def _metadata_without(check_alignment: bool, check_head_tail: bool):
    """kvm_alloc_memslot_metadata with one of its two rules removed."""
    def alloc(self, gmem_hva_fixup):
        from array import array
        ugfn = self.userspace_addr >> PAGE_SHIFT
        for level in range(PG_LEVEL_2M, KVM_MAX_HUGEPAGE_LEVEL + 1):
            n = self.lpages(level)
            linfo = array("l", [0]) * n
            mask = KVM_PAGES_PER_HPAGE(level) - 1
            if check_head_tail and self.base_gfn & mask:
                linfo[0] = 1
            if check_head_tail and (self.base_gfn + self.npages) & mask:
                linfo[n - 1] = 1
            if check_alignment and (self.base_gfn ^ ugfn) & mask:
                for j in range(n):
                    linfo[j] = 1
            self.lpage_info[level] = linfo
    return alloc


def _knock_out(monkeypatch, rule):
    if rule == "alignment":          # gfn and hva must agree modulo the huge size
        monkeypatch.setattr(KvmMemorySlot, "kvm_alloc_memslot_metadata",
                            _metadata_without(check_alignment=False, check_head_tail=True))
    elif rule == "head/tail frames":  # frames sticking out of the slot are not huge
        monkeypatch.setattr(KvmMemorySlot, "kvm_alloc_memslot_metadata",
                            _metadata_without(check_alignment=True, check_head_tail=False))
    elif rule == "dirty logging":     # hugepage_adjust / prefetch / make_spte see no logging
        monkeypatch.setattr(KvmMemorySlot, "kvm_slot_dirty_track_enabled", lambda self: False)
    elif rule == "host level":        # host_pfn_mapping_level ignores the host's page size
        monkeypatch.setattr(HostBacking, "host_pfn_mapping_level", lambda self, hva: PG_LEVEL_2M)
    elif rule == "guest page size":   # the model forgets the guest's PTE size
        orig = model_side.guest_page_tables
        monkeypatch.setattr(model_side, "guest_page_tables",
                            lambda s: orig(replace(s, guest_page_size=PAGE_2M)))
    elif rule == "write tracking":    # account_shadowed no longer disallows huge pages
        monkeypatch.setattr(shadow_mmu, "kvm_mmu_gfn_disallow_lpage", lambda slot, gfn: None)
    elif rule == "prefetch":          # 4K faults map only the faulting page
        monkeypatch.setattr(shadow_mmu.ShadowMmu, "FNAME_pte_prefetch",
                            lambda self, gw, sp, index: None)
    else:  # pragma: no cover
        raise ValueError(rule)


#: rule -> rows that must break without it (others may break too)
CATCHES = {
    "alignment": {"gpa-skew-4k", "hva-skew-4k"},
    "head/tail frames": {"both-skew-4k", "tail-frame"},
    "dirty logging": {"dirty-log-before-touch", "dirty-log-after-mapping"},
    "host level": {"thp-off", "thp-split-dontneed", "thp-split-mremap"},
    "guest page size": {"guest-4k"},
    "write tracking": {"guest-pt-in-window"},
    "prefetch": {"gpa-skew-4k", "hva-skew-4k", "thp-off", "guest-4k", "tail-frame"},
}


@pytest.mark.parametrize("rule", sorted(CATCHES))
def test_knocking_out_a_rule_breaks_a_row(monkeypatch, recorded, rule):
    _knock_out(monkeypatch, rule)
    rows = _rows(recorded)
    broken = {n for n, r in rows.items() if r.match is False}
    assert broken, f"no row needs the {rule} rule"
    assert CATCHES[rule] <= broken, f"{rule}: broke {sorted(broken)}"


def test_the_write_tracking_row_needs_write_tracking_and_nothing_else_does(monkeypatch, recorded):
    _knock_out(monkeypatch, "write tracking")
    broken = {n for n, r in _rows(recorded).items() if r.match is False}
    assert broken == {"guest-pt-in-window"}


# --------------------------------------------------------------------------------------
# compare_results and JSON
# --------------------------------------------------------------------------------------
def test_mismatch_messages_name_the_phase_and_counts(recorded):
    h = next(h for h in recorded if h.scenario.name == "thp-off")
    m = run_model_scenario(replace(h.scenario, thp=True), h.kvm_params)   # host frames derived
    row = compare_results(h, m)
    assert row.match is False
    assert row.mismatches[0].startswith("touch: pages 4096 x 4K != model 8 x 2M")
    assert "pf_fixed 512 != model 8" in row.mismatches[0]


def test_skipped_and_emulated_rows(recorded):
    hug = next(h for h in recorded if h.scenario.name == "hugetlb-2m")
    assert hug.skipped
    row = compare_results(hug, run_model_scenario(hug.scenario, hug.kvm_params))
    assert row.match is None and row.kernel is None and row.model == PageCounts(0, 8, 0)
    h = next(h for h in recorded if h.scenario.name == "aligned")
    emul = replace(h, native=replace(h.native, took_effect=False))
    row = compare_results(emul, run_model_scenario(h.scenario, host=h))
    assert row.match is False and "emulated" in row.mismatches[0]


def test_json_round_trip(recorded):
    rows = list(_rows(recorded).values())
    doc = report_to_json(rows, {"kernel_release": "x", "vendor_modules": ("kvm_pvm",),
                                "kvm_params": {"tdp_mmu": "N", "halt_poll_ns": "1"}})
    assert doc["all_match"] and doc["mmu_model"] == "shadow"
    assert doc["kvm_params"] == {"tdp_mmu": "N"}
    text = json.dumps(doc)
    again = {h.scenario.name: h for h in load_report(text)}
    for h in recorded:
        assert again[h.scenario.name].phases == h.phases
    assert load_report(recording_text(json.loads(text)))[0].phases == recorded[0].phases
    with pytest.raises(ValueError):
        load_report({"format": "other", "rows": []})


# --------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------
def _app():
    app = typer.Typer()
    cli.register(app)

    @app.command()
    def other() -> None:  # a second command, so typer keeps command names
        pass
    return app


def test_cli_without_kvm_says_why_and_exits_2():
    res = CliRunner().invoke(_app(), ["kvm-check", "--kvm-path", "/nonexistent/kvm"])
    assert res.exit_code == 2
    assert res.exception is None or isinstance(res.exception, SystemExit)
    out = res.output.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error: kvm-check: KVM is not available")
    assert "Traceback" not in res.output


def test_cli_unknown_scenario_exits_2():
    res = CliRunner().invoke(_app(), ["kvm-check", "--only", "no-such-row"])
    assert res.exit_code == 2 and "unknown scenario no-such-row" in res.output


def test_cli_table_from_recorded_rows(monkeypatch, recorded):
    rows = list(_rows(recorded).values())
    monkeypatch.setattr("tdpsim.kvmcheck.compare.run_kvm_check", lambda matrix, **kw: [r for r in rows if r.name in
                                                                    {s.name for s in matrix}])
    monkeypatch.setattr("tdpsim.kvmcheck.host_matrix.host_facts", lambda: {
        "kernel_release": "6.18", "vendor_modules": ("kvm_pvm",),
        "kvm_params": {"tdp_mmu": "N", "nx_huge_pages": "N", "eager_page_split": "Y"}})
    res = CliRunner().invoke(_app(), ["kvm-check"], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "shadow MMU" in res.output and "undocumented" in res.output
    assert "took effect" in res.output
    assert "gpa-skew-4k" in res.output and "4096 x 4K  (pf_fixed 519)" in res.output
    assert res.output.count("✔") == len(rows) - 1 and "skipped" in res.output
    res = CliRunner().invoke(_app(), ["kvm-check", "--json", "--only", "aligned"])
    assert res.exit_code == 0
    doc = json.loads(res.output)
    assert [r["name"] for r in doc["rows"]] == ["aligned"] and doc["rows"][0]["match"]


def test_cli_mismatch_exits_1(monkeypatch, recorded):
    rows = list(_rows(recorded).values())
    bad = replace(rows[0], mismatches=("touch: pages 1 x 4K != model 8 x 2M",))
    monkeypatch.setattr("tdpsim.kvmcheck.compare.run_kvm_check", lambda matrix, **kw: [bad])
    monkeypatch.setattr("tdpsim.kvmcheck.host_matrix.host_facts", lambda: {"kvm_params": {"tdp_mmu": "N"}})
    res = CliRunner().invoke(_app(), ["kvm-check"], env={"COLUMNS": "160"})
    assert res.exit_code == 1 and "✘" in res.output and "1 x 4K" in res.output


def test_cli_native_execution_not_taking_effect_is_reported(monkeypatch, recorded):
    rows = list(_rows(recorded).values())
    emul = [replace(r, native=replace(r.native, took_effect=False)) for r in rows if r.native]
    monkeypatch.setattr("tdpsim.kvmcheck.compare.run_kvm_check", lambda matrix, **kw: emul)
    monkeypatch.setattr("tdpsim.kvmcheck.host_matrix.host_facts", lambda: {"kvm_params": {"tdp_mmu": "N"}})
    res = CliRunner().invoke(_app(), ["kvm-check"], env={"COLUMNS": "200"})
    assert "did NOT take effect" in res.output and "undocumented" in res.output


@needs_kvm
def test_cli_live_json_only_aligned():
    res = CliRunner().invoke(_app(), ["kvm-check", "--json", "--only", "aligned",
                                      "--only", "guest-pt-in-window"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["all_match"]
    assert [r["name"] for r in doc["rows"]] == ["aligned", "guest-pt-in-window"]
    assert doc["rows"][0]["kernel"] == {"pages_4k": 0, "pages_2m": 8, "pages_1g": 0}
