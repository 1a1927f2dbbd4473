"""Check the model against what the QEMU oracle brought back: stats and event streams.

A *run* is the directory :mod:`tdpsim.kvmcheck.oracle_guest` wrote (``facts.json``,
``rows.jsonl``, ``traces/<row>.trace``) or the fixture made from it
(:func:`write_fixture`: the same files with the traces xz-compressed).  For each row,
:func:`check_row` compares

* **stats**: the kernel's phases (window SPTEs by size, pf_fixed, dirty pages) with the
  model's run of the same scenario (:func:`~tdpsim.kvmcheck.compare.compare_results`);
* **events**: the kernel's trace, cut into the warm-up and each phase at the guest's
  ``trace_marker`` lines, against the model's events of the same segment, event for
  event after :func:`canonical` (pfns, pointers, timestamps and RIPs dropped; SPTEs
  reduced to what they mean: present / leaf / W / X / A / D / host- and MMU-writable, so
  the kernel's NPT bits and the model's SPTE bits compare);
* **replay**: the kernel's trace through :func:`tdpsim.trace.replay_trace`; the anomaly
  count is reported.

Events the model does not emit are left out of the comparison and counted
(:data:`UNCOMPARED_EVENTS`): the emulator's guest page-table walk
(``kvm_mmu_pagetable_walk`` / ``kvm_mmu_paging_element``, KVM decoding the HLT without
NRIPS under TCG).  Everything after the last phase marker is VM teardown and is not
compared.  Pure apart from reading the run's files.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from ..model import spte as model_spte
from ..model.profile import KernelProfile
from ..trace import records as tr
from ..trace.emit import model_event_to_record
from ..trace.parser import TraceStats, parse_trace
from ..trace.replay import ReplayOptions, replay_trace
from .compare import PRIVATE_MATRIX, CheckRow, compare_results, host_result_from_dict
from .host_matrix import HostScenario
from .model_side import ModelResult, kernel_profile, run_model_scenario
from .oracle_guest import PHASE_MARK

__all__ = ["SpteBits", "NPT_BITS", "model_bits", "canonical", "split_trace", "RowCheck", "OracleRunData",
           "load_run", "check_row", "check_run", "write_fixture", "UNCOMPARED_EVENTS",
           "COMPARED_EVENTS", "event_text"]

#: events compared one for one
COMPARED_EVENTS = ("kvm_page_fault", "kvm_mmu_spte_requested", "kvm_mmu_get_page",
                   "kvm_tdp_mmu_spte_changed", "kvm_mmu_set_spte", "kvm_mmu_split_huge_page",
                   "fast_page_fault", "kvm_mmu_prepare_zap_page")
UNCOMPARED_EVENTS = ("kvm_mmu_pagetable_walk", "kvm_mmu_paging_element")


@dataclass(frozen=True)
class SpteBits:
    """Where a vendor keeps the SPTE bits :func:`canonical` looks at (``x`` is NX when
    ``x_is_nx``)."""

    mmu_present: int
    writable: int
    x: int
    x_is_nx: bool
    accessed: int
    dirty: int
    large: int
    host_writable: int
    mmu_writable: int
    frozen_low: int = 0x5A0            # REMOVED_SPTE / FROZEN_SPTE without the non-present value

    def decode(self, spte: int, level: int) -> tuple:
        if spte & ~(1 << 63) == self.frozen_low:
            return ("frozen",)
        if not spte & self.mmu_present:
            return ("-",)
        leaf = level == 1 or bool(spte & self.large)
        x = not spte & self.x if self.x_is_nx else bool(spte & self.x)
        flags = "".join(c for c, on in (("L", leaf), ("W", spte & self.writable), ("X", x),
                                        ("A", spte & self.accessed), ("D", spte & self.dirty),
                                        ("h", spte & self.host_writable),
                                        ("m", spte & self.mmu_writable)) if on)
        return (flags,)


#: AMD NPT SPTEs on 6.1 / 6.12 (``spte.h``: DEFAULT_SPTE_HOST_WRITABLE bit 9,
#: DEFAULT_SPTE_MMU_WRITABLE bit 10, SPTE_MMU_PRESENT_MASK bit 11; PT_* bits; NX bit 63)
NPT_BITS = SpteBits(mmu_present=1 << 11, writable=1 << 1, x=1 << 63, x_is_nx=True,
                    accessed=1 << 5, dirty=1 << 6, large=1 << 7, host_writable=1 << 9,
                    mmu_writable=1 << 10)


def model_bits(masks: model_spte.SpteMasks) -> SpteBits:
    """Where the model's SPTEs of one vendor format keep the bits (:class:`SpteMasks`)."""
    m = model_spte
    nx = bool(masks.shadow_nx_mask)
    return SpteBits(mmu_present=m.SPTE_MMU_PRESENT_MASK, writable=m.PT_WRITABLE_MASK,
                    x=masks.shadow_nx_mask if nx else masks.shadow_x_mask, x_is_nx=nx,
                    accessed=masks.shadow_accessed_mask, dirty=masks.shadow_dirty_mask,
                    large=m.PT_PAGE_SIZE_MASK, host_writable=masks.shadow_host_writable_mask,
                    mmu_writable=masks.shadow_mmu_writable_mask)


def canonical(rec: tr.TraceRecord, bits: SpteBits) -> Optional[tuple]:
    """What must agree between kernel and model for one record (None: not compared)."""
    e = rec.EVENT
    if e == "kvm_page_fault":
        return (e, rec.fault_address, rec.error_code)
    if e == "kvm_mmu_spte_requested":
        return (e, rec.gfn, rec.level)
    if e in ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page"):
        created = rec.created if e == "kvm_mmu_get_page" else None
        return (e, rec.gfn, rec.level, created)
    if e == "kvm_tdp_mmu_spte_changed":
        return (e, rec.gfn, rec.level, *bits.decode(rec.old_spte, rec.level),
                *bits.decode(rec.new_spte, rec.level))
    if e == "kvm_mmu_set_spte":
        return (e, rec.gfn, rec.level, *bits.decode(rec.spte, rec.level))
    if e == "kvm_mmu_split_huge_page":
        return (e, rec.gfn, rec.level, rec.errno, *bits.decode(rec.spte, rec.level))
    if e == "fast_page_fault":
        return (e, rec.cr2_or_gpa, rec.error_code, *bits.decode(rec.old_spte, 1),
                *bits.decode(rec.new_spte, 1), rec.spurious, rec.fixed)
    return None


def event_text(ev: tuple) -> str:
    """One canonical event as a line (what mismatch messages and fixtures show)."""
    return " ".join(f"{x:#x}" if isinstance(x, int) and not isinstance(x, bool) else str(x)
                    for x in ev)


#: a ``trace_marker`` line: the print event names its caller, ``tracing_mark_write``,
#: or gives its address when the kernel has no kallsyms (a tinyconfig build)
_MARK_LINE = re.compile(r": (?:tracing_mark_write|0x[0-9a-f]+): " + re.escape(PHASE_MARK) + r"(.*)$")


def split_trace(lines: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Cut a raw trace at the ``tdpsim-phase NAME`` markers: {segment: lines before its
    marker}, and the lines after the last marker (teardown)."""
    segments: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in lines:
        m = _MARK_LINE.search(line) if PHASE_MARK in line else None
        if m:
            segments[m.group(1).strip()] = cur
            cur = []
        else:
            cur.append(line)
    return segments, cur


def _kernel_events(lines: list[str], name: str, bits: SpteBits) -> tuple[list[tuple], dict]:
    stats = TraceStats()
    out, skipped = [], {}
    for rec in parse_trace(lines, filename=name, stats=stats):
        c = canonical(rec, bits)
        if c is None:
            skipped[rec.EVENT] = skipped.get(rec.EVENT, 0) + 1
        else:
            out.append(c)
    for ev in UNCOMPARED_EVENTS:
        n = sum(f": {ev}:" in line for line in lines)
        if n:
            skipped[ev] = n
    return out, skipped


def _model_events(events: Iterable[object], bits: SpteBits) -> list[tuple]:
    out = []
    for e in events:
        rec = model_event_to_record(e, comm="m", pid=0, cpu=0, timestamp="0")
        if rec is not None:
            c = canonical(rec, bits)
            if c is not None:
                out.append(c)
    return out


def _first_difference(kernel: Sequence[tuple], model: Sequence[tuple]) -> Optional[str]:
    for i, (k, m) in enumerate(zip(kernel, model)):
        if k != m:
            return f"event {i}: kernel [{event_text(k)}] != model [{event_text(m)}]"
    if len(kernel) != len(model):
        i = min(len(kernel), len(model))
        longer, who = (kernel, "kernel") if len(kernel) > len(model) else (model, "model")
        return (f"event {i}: only the {who} goes on ({len(longer) - i} more, first "
                f"[{event_text(longer[i])}])")
    return None


@dataclass
class RowCheck:
    """One oracle row: the stats check, the per-segment event check, the replay."""

    name: str
    stats: Optional[CheckRow]
    error: Optional[str] = None               # the guest could not run the row
    event_mismatches: list[str] = field(default_factory=list)
    events_compared: int = 0
    uncompared: dict = field(default_factory=dict)
    replay_anomalies: Optional[int] = None
    replay_kinds: dict = field(default_factory=dict)
    trace_overruns: int = 0

    @property
    def stats_match(self) -> Optional[bool]:
        return None if self.stats is None or self.stats.match is None else self.stats.match

    @property
    def events_match(self) -> Optional[bool]:
        if self.stats is None or self.stats.skipped:
            return None
        return not self.event_mismatches and not self.trace_overruns


@dataclass
class OracleRunData:
    facts: dict
    rows: list[dict]
    root: Path

    def trace_lines(self, row: Mapping) -> Optional[list[str]]:
        rel = row.get("trace")
        if not rel:
            return None
        for path, opener in ((self.root / rel, open), (self.root / (rel + ".xz"), lzma.open)):
            if path.exists():
                with opener(path, "rt") as f:
                    return f.read().splitlines()
        return None


def load_run(root: str | os.PathLike[str]) -> OracleRunData:
    root = Path(root)
    facts = json.loads((root / "facts.json").read_text())
    rows = [json.loads(line) for line in (root / "rows.jsonl").read_text().splitlines() if line]
    return OracleRunData(facts, rows, root)


def check_row(run: OracleRunData, row: Mapping, scenario: HostScenario, *,
              replay: bool = True, profile: Optional[KernelProfile] = None) -> RowCheck:
    """Stats, events and replay of one recorded row; the model runs as ``profile``
    (default: the recorded kernel release's)."""
    if "error" in row:
        return RowCheck(row["name"], None, error=row["error"])
    params = row.get("kvm_params") or run.facts.get("kvm_params", {})
    host = host_result_from_dict(row, scenario, params, run.facts.get("kernel_release", ""))
    profile = profile or kernel_profile(host.kernel_release)
    model: ModelResult = run_model_scenario(scenario, params, host, profile,
                                            root_level=int(run.facts.get("npt_root_level", 4)))
    rc = RowCheck(row["name"], compare_results(host, model),
                  trace_overruns=int(row.get("trace_overruns", 0)))
    lines = run.trace_lines(row)
    if host.skipped or lines is None:
        return rc
    if rc.trace_overruns:
        rc.event_mismatches.append(f"the kernel's trace lost events ({rc.trace_overruns} overruns)")
    segments, _teardown = split_trace(lines)
    mbits = model_bits(model.masks)
    for seg in ["warmup"] + [p.name for p in host.phases]:
        if seg not in segments:
            rc.event_mismatches.append(f"{seg}: no trace marker in the kernel's trace")
            continue
        kev, skipped = _kernel_events(segments[seg], f"{row['name']}:{seg}", NPT_BITS)
        for k, n in skipped.items():
            rc.uncompared[k] = rc.uncompared.get(k, 0) + n
        mev = _model_events(model.events.get(seg, ()), mbits)
        rc.events_compared += len(kev)
        diff = _first_difference(kev, mev)
        if diff:
            rc.event_mismatches.append(f"{seg}: {diff}")
    if replay:
        opts = ReplayOptions(profile=profile, vendor="amd")
        res = replay_trace(io.StringIO("\n".join(lines) + "\n"), opts, resolve_lines=False)
        rc.replay_anomalies = len(res.anomalies)
        for a in res.anomalies:
            rc.replay_kinds[a.kind] = rc.replay_kinds.get(a.kind, 0) + 1
    return rc


def check_run(root: str | os.PathLike[str], matrix: Iterable[HostScenario] = PRIVATE_MATRIX,
              *, replay: bool = True,
              profile: Optional[KernelProfile] = None) -> tuple[OracleRunData, list[RowCheck]]:
    """:func:`check_row` for every recorded row of the run at *root* that *matrix* knows;
    a recorded row the matrix does not know is an error row."""
    run = load_run(root)
    by_name = {s.name: s for s in matrix}
    out = []
    for row in run.rows:
        s = by_name.get(row["name"])
        if s is None:
            out.append(RowCheck(row["name"], None, error="not a row of this tdpsim's matrix"))
        else:
            out.append(check_row(run, row, s, replay=replay, profile=profile))
    return run, out


def write_fixture(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[str]:
    """Copy a run into a fixture directory: facts.json, rows.jsonl (tracebacks dropped),
    the traces and a built kernel's ``kernel.config`` xz-compressed; returns the files
    written."""
    src, dest = Path(src), Path(dest)
    (dest / "traces").mkdir(parents=True, exist_ok=True)
    written = []
    (dest / "facts.json").write_text((src / "facts.json").read_text())
    rows = [json.loads(line) for line in (src / "rows.jsonl").read_text().splitlines() if line]
    with open(dest / "rows.jsonl", "w") as f:
        for r in rows:
            r.pop("traceback", None)
            f.write(json.dumps(r, sort_keys=True) + "\n")
    written += [str(dest / "facts.json"), str(dest / "rows.jsonl")]
    # the .config of a kernel built for the oracle (run_oracle keeps it)
    files = ["kernel.config"] if (src / "kernel.config").exists() else []
    files += [r["trace"] for r in rows if r.get("trace") and (src / r["trace"]).exists()]
    for name in files:
        out = dest / (name + ".xz")
        with open(src / name, "rb") as fi, lzma.open(out, "wb", preset=9) as fo:
            fo.write(fi.read())
        written.append(str(out))
    return written
