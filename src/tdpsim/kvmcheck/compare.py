"""kvm-check: the host's KVM and the model, scenario by scenario.

:func:`run_kvm_check` runs :data:`CHECK_MATRIX` (the host matrix plus the
guest-page-table-in-window row) on /dev/kvm, runs each scenario through the model chosen
by the host's ``kvm.tdp_mmu`` (:func:`~tdpsim.kvmcheck.model_side.run_model_scenario`,
fed with the host's measured THP state) and returns one :class:`CheckRow` per scenario.
:func:`compare_results` is the pure part (kernel result + model result → row), so the
comparison also runs on recorded kernel results (:func:`load_report` reads what
:func:`report_to_json` wrote, e.g. ``tdpsim kvm-check --json``).

A row matches when every phase agrees on the SPTE census (pages_4k/2m/1g), on pf_fixed,
and on the dirty-page count where the kernel reported one, and the warm-up left the same
number of SPTEs.  Nothing here prints.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Iterable, Mapping, Optional, Sequence

from .host_matrix import (DEFAULT_MATRIX, PRIVATE_ROWS, TDP_ROWS, Marker, HostResult, HostScenario, NativeExecution,
                          PageCounts, PhaseResult, host_facts, run_host_scenario)
from ..model.profile import KernelProfile
from .model_side import ModelResult, mmu_kind, run_model_scenario
from .pt_window import PT_WINDOW_ROW, PtWindowScenario, run_pt_window_scenario
from .vm import DEFAULT_KVM_PATH, NATIVE_EXEC_MSR

__all__ = ["CHECK_MATRIX", "ORACLE_MATRIX", "PRIVATE_MATRIX", "phase_to_dict", "PhaseCheck", "CheckRow", "compare_results", "run_kvm_check",
           "report_to_json", "load_report", "host_result_from_dict", "JSON_FORMAT"]

CHECK_MATRIX: tuple[HostScenario, ...] = DEFAULT_MATRIX + (PT_WINDOW_ROW,)
#: the rows the QEMU oracle runs on a TDP MMU (NPT) kernel
ORACLE_MATRIX: tuple[HostScenario, ...] = CHECK_MATRIX + TDP_ROWS
#: ... and on a kernel that has KVM_X86_SW_PROTECTED_VM, the private-memory rows after them
PRIVATE_MATRIX: tuple[HostScenario, ...] = ORACLE_MATRIX + PRIVATE_ROWS
JSON_FORMAT = "tdpsim-kvm-check/1"
#: the module parameters that choose and shape the model
MODEL_PARAMS = ("tdp_mmu", "nx_huge_pages", "eager_page_split")


@dataclass(frozen=True)
class PhaseCheck:
    """One phase, kernel vs model."""

    name: str
    kernel_pages: PageCounts
    model_pages: Optional[PageCounts]
    kernel_pf_fixed: int
    model_pf_fixed: Optional[int]
    kernel_dirty: Optional[int] = None
    model_dirty: Optional[int] = None

    @property
    def match(self) -> bool:
        return (self.kernel_pages == self.model_pages
                and self.kernel_pf_fixed == self.model_pf_fixed
                and (self.kernel_dirty is None or self.kernel_dirty == self.model_dirty))


@dataclass(frozen=True)
class CheckRow:
    """One scenario: the kernel's counts, the model's, and whether they agree.

    ``match`` is None when the kernel side was skipped (e.g. no hugetlb pool)."""

    name: str
    description: str
    mmu: str
    kernel: Optional[PageCounts]
    model: Optional[PageCounts]
    kernel_pf_fixed: Optional[int]
    model_pf_fixed: Optional[int]
    phases: tuple[PhaseCheck, ...] = ()
    kernel_warmup_sptes: Optional[int] = None
    model_warmup_sptes: Optional[int] = None
    native: Optional[NativeExecution] = None
    skipped: Optional[str] = None
    mismatches: tuple[str, ...] = ()
    host: Optional[HostResult] = field(default=None, compare=False, repr=False)

    @property
    def match(self) -> Optional[bool]:
        if self.skipped:
            return None
        return not self.mismatches

    def to_dict(self) -> dict:
        d = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "host"}
        d["match"] = self.match
        if self.host is not None:
            d["kernel_phases"] = [phase_to_dict(p) for p in self.host.phases]
        return d


def _plain(v):
    if is_dataclass(v):
        return asdict(v)
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _pf_fixed(p: PhaseResult) -> int:
    return int(p.counters.get("pf_fixed", 0))


def compare_results(host: HostResult, model: ModelResult) -> CheckRow:
    """Kernel result + model result of the same scenario → :class:`CheckRow`."""
    s = host.scenario
    common = dict(name=s.name, description=s.description, mmu=model.mmu,
                  model=model.final, model_pf_fixed=sum(_pf_fixed(p) for p in model.phases),
                  model_warmup_sptes=model.warmup_sptes, native=host.native, host=host)
    if host.skipped:
        return CheckRow(kernel=None, kernel_pf_fixed=None, skipped=host.skipped, **common)
    mismatches: list[str] = []
    if host.native is not None and not host.native.took_effect:
        mismatches.append("the vCPU emulated instead of running natively (the native-"
                          "execution MSR did not take effect): the kernel created no SPTEs")
    model_phases = {p.name: p for p in model.phases}
    checks = []
    for kp in host.phases:
        mp = model_phases.get(kp.name)
        c = PhaseCheck(kp.name, kp.pages, mp.pages if mp else None, _pf_fixed(kp),
                       _pf_fixed(mp) if mp else None, kp.dirty_pages,
                       mp.dirty_pages if mp else None)
        checks.append(c)
        if mp is None:
            mismatches.append(f"{kp.name}: the model has no such phase")
        elif not c.match:
            what = [f"pages {kp.pages} != model {mp.pages}"] if kp.pages != mp.pages else []
            if c.kernel_pf_fixed != c.model_pf_fixed:
                what.append(f"pf_fixed {c.kernel_pf_fixed} != model {c.model_pf_fixed}")
            if c.kernel_dirty is not None and c.kernel_dirty != c.model_dirty:
                what.append(f"dirty {c.kernel_dirty} != model {c.model_dirty}")
            mismatches.append(f"{kp.name}: " + ", ".join(what))
    extra = [p.name for p in model.phases if p.name not in {kp.name for kp in host.phases}]
    if extra:
        mismatches.append(f"the kernel has no phase {', '.join(extra)}")
    kw = host.native.warmup_sptes if host.native is not None else None
    if kw is not None and host.native.took_effect and kw != model.warmup_sptes:
        mismatches.append(f"warm-up SPTEs {kw} != model {model.warmup_sptes}")
    if host.repeatable is False:
        mismatches.append("the kernel did not repeat itself: " + "; ".join(host.repeat_mismatches))
    return CheckRow(kernel=host.final, kernel_pf_fixed=sum(_pf_fixed(p) for p in host.phases),
                    phases=tuple(checks), kernel_warmup_sptes=kw,
                    mismatches=tuple(mismatches), **common)


def run_host(s: HostScenario, *, repeats: int = 2, kvm_path: str = DEFAULT_KVM_PATH,
             facts: Optional[dict] = None, marker: Optional[Marker] = None) -> HostResult:
    """The host run of one check-matrix row (either kind of scenario)."""
    kw = dict(repeats=repeats, kvm_path=kvm_path, facts=facts)
    if marker is not None:
        kw["marker"] = marker
    if isinstance(s, PtWindowScenario):
        return run_pt_window_scenario(s, **kw)
    return run_host_scenario(s, **kw)


def run_kvm_check(matrix: Iterable[HostScenario] = CHECK_MATRIX, *, repeats: int = 2,
                  kvm_path: str = DEFAULT_KVM_PATH, facts: Optional[dict] = None,
                  profile: Optional[KernelProfile] = None) -> list[CheckRow]:
    """Run every scenario on the host, then through the model (as ``profile``, default
    the host kernel's); one row each.

    Raises :class:`~tdpsim.kvmcheck.vm.KvmUnavailable` when /dev/kvm cannot be used."""
    facts = facts if facts is not None else host_facts()
    rows = []
    for s in matrix:
        host = run_host(s, repeats=repeats, kvm_path=kvm_path, facts=facts)
        rows.append(compare_results(host, run_model_scenario(s, facts["kvm_params"], host,
                                                             profile)))
    return rows


# --------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------
def phase_to_dict(p: PhaseResult) -> dict:
    return {"name": p.name, "pages": asdict(p.pages), "pf_fixed": _pf_fixed(p),
            "pf_taken": int(p.counters.get("pf_taken", 0)),
            "host_huge_frames": list(p.host_huge_frames), "dirty_pages": p.dirty_pages}


def report_to_json(rows: Sequence[CheckRow], facts: Optional[Mapping] = None) -> dict:
    """The machine-readable report: host facts, the model chosen, one entry per row
    (with the kernel's phases, so the report doubles as a recording)."""
    facts = dict(facts or {})
    params = dict(facts.get("kvm_params", {}))
    return {
        "format": JSON_FORMAT,
        "kernel_release": facts.get("kernel_release", ""),
        "vendor_modules": list(facts.get("vendor_modules", ())),
        "kvm_params": {k: params[k] for k in MODEL_PARAMS if k in params},
        "mmu_model": mmu_kind(params) if params else (rows[0].mmu if rows else None),
        "native_exec_msr": f"{NATIVE_EXEC_MSR:#x}",
        "all_match": all(r.match is not False for r in rows),
        "rows": [r.to_dict() for r in rows],
    }


def host_result_from_dict(row: Mapping, scenario: HostScenario,
                          kvm_params: Mapping[str, str], kernel_release: str = "") -> HostResult:
    """Rebuild the kernel side of one JSON row as a :class:`HostResult`."""
    if row.get("skipped"):
        return HostResult(scenario, skipped=row["skipped"], kvm_params=dict(kvm_params),
                          kernel_release=kernel_release)
    phases = tuple(
        PhaseResult(p["name"], PageCounts(**p["pages"]),
                    {k: p[k] for k in ("pf_fixed", "pf_taken") if p.get(k)},
                    tuple(p["host_huge_frames"]), p.get("dirty_pages"))
        for p in row["kernel_phases"])
    nat = row.get("native")
    native = NativeExecution(**nat) if nat else None
    return HostResult(scenario, phases=phases, native=native, kvm_params=dict(kvm_params),
                      kernel_release=kernel_release)


def load_report(data: Mapping | str, matrix: Iterable[HostScenario] = CHECK_MATRIX
                ) -> list[HostResult]:
    """The kernel results recorded in a :func:`report_to_json` document (or its text),
    for the scenarios of *matrix* it has rows for."""
    if isinstance(data, str):
        data = json.loads(data)
    if data.get("format") != JSON_FORMAT:
        raise ValueError(f"not a {JSON_FORMAT} document")
    by_name = {s.name: s for s in matrix}
    return [host_result_from_dict(r, by_name[r["name"]], data.get("kvm_params", {}))
            for r in data["rows"] if r["name"] in by_name]


def recording_text(doc: Mapping) -> str:
    """A :func:`report_to_json` document cut down to the kernel side (host facts and each
    row's kernel phases / native-execution result), one row per line: the form of the
    recorded fixture the model-only tests compare against.  :func:`load_report` reads it."""
    top = ("format", "kernel_release", "vendor_modules", "kvm_params", "mmu_model",
           "native_exec_msr")
    rows = []
    for r in doc["rows"]:
        row = {"name": r["name"], "skipped": r["skipped"], "native": r.get("native")}
        if not r["skipped"]:
            row["kernel_phases"] = r["kernel_phases"]
        rows.append(row)
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(doc.get(k))}," for k in top]
    lines.append(' "rows": [')
    lines.append(",\n".join("  " + json.dumps(r, separators=(",", ":")) for r in rows))
    lines.append(" ]\n}")
    return "\n".join(lines) + "\n"
