"""Replay a KVM ftrace capture against the TDP MMU's rules.

The replayer rebuilds every root's page tables from the SPTE changes that
``handle_changed_spte`` traces (``kvmmmu:kvm_tdp_mmu_spte_changed``, old → new) and checks
each change against what it already holds, the way the kernel's own bookkeeping would see
it (reference ``kvm-tdp-mmu.md`` §4.4-4.5, §5, §8.2 "Replayer notes")::

    from tdpsim.trace.replay import replay_trace, ReplayOptions
    result = replay_trace("trace.txt", options=ReplayOptions(policy=Policy()))
    result.pages            # [pages_4k, pages_2m, pages_1g] derived like kvm_update_page_stats
    result.anomalies        # each with the trace lines (file:line and text) that show it

Streaming: records are consumed one at a time; memory grows only with the number of live
page tables (one 512-entry array per table, like the kernel), the number of tasks and roots,
and a bounded number of samples and anomaly examples.

Which root an SPTE belongs to.  ``kvm_tdp_mmu_spte_changed`` carries the stripped gfn and
no root (§2.4), so the replayer uses, in order:

1. structure: only roots holding a table at (level, gfn) are candidates, and a present
   ``old_spte`` matches (at most) one of them — zaps, splits, promotions and table removals
   are never ambiguous;
2. for installs over a non-present SPTE held by several roots: the fault context of the task
   (``kvm_page_fault.address`` with the TDX shared bit → direct root, without → mirror),
   then the root the task last wrote, then the oldest valid root (a TD's mirror root is
   allocated first: ``mmu_alloc_direct_roots``);
3. ``kvm_mmu_set_spte``'s ``at`` (the SPTE's physical address, i.e. its table) confirms the
   choice and re-attributes the install when the guess was wrong.

Roots come from ``kvm_mmu_get_page`` at the root level.  Only the raw
(``[FAILED TO PARSE]``) text carries ``role.is_mirror``; with the kernel's or trace-cmd's
text the replayer infers a TD from two roots allocated back to back (mirror first), or
takes ``ReplayOptions.tdx``.  A trace that starts after the VM was built (changes before
any root) is replayed in *learning* mode: tables appear on demand with unknown entries,
which the first change to each entry fills in without a check; stats are then deltas.

Hardware-set Accessed/Dirty bits are not traced, so a present leaf with volatile bits
(``kvm_tdp_mmu_spte_need_atomic_write``) may show up in ``old_spte`` with A/D set that the
replayer did not see being set; that is accepted and counted (``hw_ad_updates``).
"""

from __future__ import annotations

import os
import re
from array import array
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from typing import Any, Callable, Iterable, Iterator

from ..model.kvm import PagesByLevel
from ..model.policy import Policy
from ..model.profile import DEFAULT_PROFILE, KernelProfile
from ..model.spte import (
    KVM_PAGES_PER_HPAGE,
    PG_LEVEL_4K,
    SPTE_ENT_PER_PAGE,
    SPTE_INDEX,
    SPTE_LEVEL_BITS,
    ACC_ALL,
    PAGE_SHIFT,
    PT_PAGE_SIZE_MASK,
    SPTE_MMU_PRESENT_MASK,
    is_last_spte,
    is_shadow_present_pte,
    make_small_spte,
    make_spte_executable,
    spte_to_pfn,
    vendor_spte_masks,
)
from .infer import MAX_SCAN_LINES, KernelInference, infer_kernel
from .parser import TraceParseError, TraceParser, TraceStats, wants
from .records import (
    EVENT_CLASSES,
    FastPageFault,
    KvmEntry,
    KvmMmuGetPage,
    KvmMmuPrepareZapPage,
    KvmMmuSetSpte,
    KvmMmuSplitHugePage,
    KvmPageFault,
    KvmTdpMmuSpteChanged,
    MarkMmioSpte,
    TraceRecord,
    timestamp_to_ns,
)

__all__ = [
    "ReplayOptions",
    "TraceLineRef",
    "Anomaly",
    "PageSample",
    "ActorStats",
    "RootInfo",
    "ReplayResult",
    "TraceReplayer",
    "replay_trace",
    "replay_records",
    "ANOMALY_KINDS",
]

#: Placeholder for an SPTE the replayer has never seen (learning mode).  Not a value any
#: EPT SPTE can hold (it would be present, MMIO-misconfigured and have every reserved bit).
UNKNOWN_SPTE = (1 << 64) - 1

_TABLE_SPAN_SHIFT = SPTE_LEVEL_BITS  # a table at level L covers 512**L pages

#: Anomaly kinds and what they mean.
ANOMALY_KINDS: dict[str, str] = {
    "old_spte_mismatch": "old_spte differs from the value the replayer holds for that SPTE",
    "unknown_table": "an SPTE change in a table no root holds",
    "level_too_high": "a leaf above the maximum level allowed for its root",
    "mirror_promotion": "a mirror table replaced by a huge leaf (KVM_BUG_ON in "
                        "set_external_spte_present; prevented by the SEED patch)",
    "mirror_leaf_change": "a present mirror leaf changed in place (mirror leaves are "
                          "immutable while present)",
    "leaf_pfn_change": "a present leaf replaced by one with another pfn (BUG() in "
                       "handle_changed_spte)",
    "table_replaced": "a table replaced by another table (WARN in handle_changed_spte)",
    "zap_leak": "a removed table kept present children that were never frozen",
    "frozen_outside_removal": "FROZEN_SPTE written outside a table removal",
    "prepare_zap_mismatch": "kvm_mmu_prepare_zap_page does not match the table being removed",
    "split_mismatch": "kvm_mmu_split_huge_page without the matching leaf → table change",
    "set_spte_mismatch": "kvm_mmu_set_spte disagrees with the replayed SPTE at 'at'",
    "misaligned": "gfn not aligned to the level (WARN in handle_changed_spte)",
    "bad_level": "level outside 1..5",
    "negative_pages": "a page count went below zero (more leaves removed than installed)",
    "parse_error": "a line of a supported event did not parse",
}


# ---------------------------------------------------------------------------------------
# Options and results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    """What the replayed kernel is allowed to do.

    ``policy`` supplies the defaults: ``max_level_direct`` = ``policy.max_huge_page_level``
    (1G); ``max_level_mirror`` = ``policy.tdx_private_max_level`` with HP-v3
    (``tdx_huge_page``, 2M) else 4K (UPSTREAM); mirror promotion is an anomaly unless
    ``policy.mirror_promotion == "seamcall"``; ``policy.nx_huge_pages`` decides whether split
    4K children get X back (``make_small_spte``).
    ``profile``: the kernel generation that wrote the trace (its non-present and frozen
    SPTE values); ``vendor``: "intel" (EPT SPTEs) or "amd" (NPT SPTEs).  None = inferred
    from the trace by :func:`replay_trace` (:mod:`tdpsim.trace.infer`), falling back to
    the default profile and intel when the trace does not say.
    ``tdx``: None = infer from the roots, True/False = the trace is / is not of a TD.
    ``root_level``: 4 or 5 (EPT walk length); a level-5 root page switches it to 5.
    ``sample_every``: records between page-stat samples (doubled whenever ``max_samples``
    would be exceeded, so memory stays bounded).
    """

    policy: Policy = field(default_factory=Policy)
    profile: KernelProfile | None = None
    vendor: str | None = None
    max_level_direct: int | None = None
    max_level_mirror: int | None = None
    tdx: bool | None = None
    root_level: int = 4
    sample_every: int = 10_000
    max_samples: int = 2_000
    max_anomalies: int = 1_000

    @property
    def direct_max(self) -> int:
        return self.max_level_direct or self.policy.max_huge_page_level

    @property
    def mirror_max(self) -> int:
        if self.max_level_mirror:
            return self.max_level_mirror
        return self.policy.tdx_private_max_level if self.policy.tdx_huge_page else PG_LEVEL_4K


@dataclass(frozen=True, slots=True)
class TraceLineRef:
    """A trace line an anomaly points at."""

    filename: str
    lineno: int
    text: str | None = None

    def __str__(self) -> str:
        text = "" if self.text is None else f": {self.text.rstrip()}"
        return f"{self.filename}:{self.lineno}{text}"


@dataclass(slots=True)
class Anomaly:
    """One broken rule; ``lines[0]`` is the line where it was detected."""

    kind: str
    message: str
    lines: list[TraceLineRef]

    @property
    def lineno(self) -> int:
        return self.lines[0].lineno if self.lines else 0

    def __str__(self) -> str:
        where = "\n".join(f"    {ref}" for ref in self.lines)
        return f"[{self.kind}] {self.message}\n{where}"


@dataclass(frozen=True, slots=True)
class PageSample:
    """``pages_4k/2m/1g`` after the record at ``lineno``."""

    lineno: int
    timestamp_ns: int
    pages_4k: int
    pages_2m: int
    pages_1g: int


@dataclass(slots=True)
class ActorStats:
    """Per task (``vcpuN`` for vCPU threads, else ``comm-pid``)."""

    faults: int = 0
    installs: int = 0
    links: int = 0
    splits: int = 0
    split_failures: int = 0
    promotions: int = 0
    leaf_zaps: int = 0
    table_zaps: int = 0
    tables_removed: int = 0
    fast_fixed: int = 0


@dataclass(slots=True)
class RootInfo:
    root_id: int
    kind: str  # "mirror", "direct" or "unknown"
    level: int
    valid: bool
    lineno: int
    learning: bool
    changes: int
    tables: int


@dataclass
class ReplayResult(PagesByLevel):
    """Everything ``replay_trace`` derives.  ``pages`` follow ``kvm_update_page_stats``."""

    filename: str
    pages: list[int]
    samples: list[PageSample]
    actors: dict[str, ActorStats]
    counters: dict[str, int]
    anomalies: list[Anomaly]
    anomaly_counts: dict[str, int]
    roots: list[RootInfo]
    parse_stats: TraceStats | None
    records: int
    learning: bool
    parse_error: TraceParseError | None = None
    kernel: str = DEFAULT_PROFILE.name  # the profile replayed under
    vendor: str = "intel"
    inference: KernelInference | None = None  # how replay_trace chose them

    @property
    def anomaly_total(self) -> int:
        return sum(self.anomaly_counts.values())

    @property
    def ok(self) -> bool:
        return self.anomaly_total == 0 and self.parse_error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "file": self.filename,
            "records": self.records,
            "learning_mode": self.learning,
            "kernel": self.kernel,
            "vendor": self.vendor,
            "inference": None if self.inference is None else self.inference.to_dict(),
            "pages": {"4k": self.pages[0], "2m": self.pages[1], "1g": self.pages[2]},
            "counters": dict(self.counters),
            "actors": {k: {f: getattr(v, f) for f in ActorStats.__slots__}
                       for k, v in sorted(self.actors.items())},
            "roots": [{f: getattr(r, f) for f in RootInfo.__slots__} for r in self.roots],
            "anomaly_counts": dict(self.anomaly_counts),
            "anomalies": [
                {"kind": a.kind, "message": a.message,
                 "lines": [{"file": r.filename, "line": r.lineno, "text": r.text}
                           for r in a.lines]}
                for a in self.anomalies
            ],
            "samples": [[s.lineno, s.timestamp_ns, s.pages_4k, s.pages_2m, s.pages_1g]
                        for s in self.samples],
            "parse": None if self.parse_stats is None else {
                "lines": self.parse_stats.lines, "events": dict(self.parse_stats.events),
                "bad_lines": self.parse_stats.bad_lines,
                "lost_events": self.parse_stats.lost_events,
                "bad_examples": [{"line": b.lineno, "field": b.field, "reason": b.reason,
                                  "text": b.line} for b in self.parse_stats.bad_examples],
            },
            "parse_error": None if self.parse_error is None else str(self.parse_error),
        }


# ---------------------------------------------------------------------------------------
# Replayer state
# ---------------------------------------------------------------------------------------


class _Root:
    __slots__ = ("root_id", "kind", "level", "valid", "lineno", "learning", "changes",
                 "tables", "role")

    def __init__(self, root_id: int, kind: str | None, level: int, lineno: int,
                 learning: bool, role: int | None) -> None:
        self.root_id = root_id
        self.kind = kind
        self.level = level
        self.valid = True
        self.lineno = lineno
        self.learning = learning
        self.changes = 0
        self.tables: dict[int, _Table] = {}
        self.role = role


class _Table:
    """One page table: 512 SPTEs at ``level``; ``lines`` holds the line that last wrote
    each entry (0 = never written in the trace)."""

    __slots__ = ("root", "level", "base", "pfn", "spt", "lines", "split_from")

    def __init__(self, root: _Root, level: int, base: int, pfn: int | None, fill: int) -> None:
        self.root = root
        self.level = level
        self.base = base
        self.pfn = pfn
        self.spt = array("Q", [fill]) * SPTE_ENT_PER_PAGE
        self.lines = array("I", [0]) * SPTE_ENT_PER_PAGE
        self.split_from = 0  # line of the split that created it (X-bit tolerance)


def _hw_ad_update(ad_mask: int, cur: int, old: int, level: int) -> bool:
    """``old`` is ``cur`` plus Accessed/Dirty bits (``ad_mask``) the CPU sets without a
    trace event (the reason ``kvm_tdp_mmu_write_spte`` uses xchg for leaves with volatile
    bits)."""
    return (is_shadow_present_pte(cur) and is_last_spte(cur, level)
            and (cur | ad_mask) == (old | ad_mask) and old & cur == cur and old != cur)


def _table_key(gfn: int, level: int) -> int:
    return ((gfn >> (level * SPTE_LEVEL_BITS)) << 3) | level


class _Removal:
    """A table detached by ``handle_removed_pt``, whose children are being frozen."""

    __slots__ = ("table", "lineno", "prepared", "frozen", "silent")

    def __init__(self, table: _Table, lineno: int) -> None:
        self.silent = False  # children may vanish untraced (seamcall mirror promotion)
        self.table = table
        self.lineno = lineno
        self.prepared = False
        self.frozen = 0


class _Task:
    __slots__ = ("label", "fault_kind", "removals", "last_root", "last_install",
                 "pending_split", "stats")

    def __init__(self, label: str, stats: ActorStats) -> None:
        self.label = label
        self.fault_kind: str | None = None
        self.removals: list[_Removal] = []
        self.last_root: _Root | None = None
        # (table, idx, old, new, gfn, level, ambiguous) of the last install, for set_spte
        self.last_install: tuple | None = None
        self.pending_split: tuple[int, int, int, int] | None = None
        self.stats = stats


_VCPU_COMM = re.compile(r"CPU (\d+)/KVM")


class TraceReplayer:
    """Feed records in file order with :meth:`feed`; :meth:`finish` returns the result.

    ``current_line`` is a zero-argument callable returning the text of the line being
    fed (see :func:`replay_trace`), used only when an anomaly is recorded.
    """

    def __init__(self, options: ReplayOptions | None = None, *, filename: str = "<stream>",
                 current_line: Callable[[], str | None] | None = None) -> None:
        self.opts = opts = options or ReplayOptions()
        self.filename = filename
        self._current_line = current_line or (lambda: None)
        self._line: str | None = None  # the line being replayed (replay_trace's fast path)
        self.pages = [0, 0, 0]
        self.counters: dict[str, int] = dict.fromkeys((
            "spte_changes", "installs", "links", "splits", "split_failures", "promotions",
            "mirror_promotions", "leaf_zaps", "table_zaps", "tables_removed",
            "frozen_children", "leaf_updates", "mmio_changes", "hw_ad_updates",
            "reattributed", "faults", "fast_fixed", "root_pages", "child_pages",
            "atomic_zaps"), 0)
        self.anomalies: list[Anomaly] = []
        self.anomaly_counts: dict[str, int] = {}
        self.actors: dict[str, ActorStats] = {}
        self.samples: list[PageSample] = []
        self.records = 0
        self._sample_every = max(1, opts.sample_every)
        self._next_sample = self._sample_every
        self._roots: list[_Root] = []
        # Every root's table at a key, in root order: the candidates of a change without
        # a walk over all roots (a long trace has many invalidated roots).
        self._at: dict[int, list[_Table]] = {}
        self._by_pfn: dict[int, _Table] = {}
        self._tasks: dict[int, _Task] = {}
        self._tdx = opts.tdx
        self.profile = profile = opts.profile or DEFAULT_PROFILE
        self.vendor = opts.vendor or "intel"
        self.inference: KernelInference | None = None  # set by replay_trace
        self._frozen = profile.FROZEN_SPTE
        # Before v6.10 tdp_mmu_zap_spte_atomic traces its freeze and writes 0 silently.
        self._traced_freeze_zaps = not profile.zap_spte_atomic_handles_after_write
        self._masks = m = vendor_spte_masks(self.vendor, profile)
        self._ad_mask = m.shadow_accessed_mask | m.shadow_dirty_mask
        self._nonpresent = profile.SHADOW_NONPRESENT_VALUE
        self._root_level = opts.root_level
        self._learning = False
        self._negative_levels: set[int] = set()
        self._max = {"mirror": opts.mirror_max, "direct": opts.direct_max}
        self._last_ts = 0
        self._handlers: dict[type, Callable[[Any, _Task], None]] = {
            KvmTdpMmuSpteChanged: self._on_changed,
            KvmMmuSetSpte: self._on_set_spte,
            KvmMmuSplitHugePage: self._on_split,
            KvmMmuGetPage: self._on_get_page,
            KvmMmuPrepareZapPage: self._on_prepare_zap,
            KvmPageFault: self._on_page_fault,
            KvmEntry: self._on_entry,
            FastPageFault: self._on_fast_page_fault,
            MarkMmioSpte: self._on_mark_mmio,
        }

    # --- public -------------------------------------------------------------------------

    def feed(self, rec: TraceRecord) -> None:
        """Replay one record."""
        self.records += 1
        h = self._handlers.get(rec.__class__)
        if h is not None:
            pid = rec.pid
            task = self._tasks.get(pid)
            if task is None:
                task = self._new_task(rec.comm, pid)
            h(rec, task)
        if self.records >= self._next_sample:
            self._sample(rec)

    # Handlers for TraceParser._drive: the same as feeding the record that the line
    # would give (``hdr`` = (comm, pid, cpu, tgid, flags), ``ts`` the timestamp text).

    @wants("gfn", "level", "old_spte", "new_spte")
    def _fast_changed(self, line: str, ln: int, hdr: tuple[Any, ...], ts: str, gfn: int,
                      level: int, old: int, new: int) -> None:
        """``kvm_tdp_mmu_spte_changed`` without a record."""
        self._line = line
        self.records += 1
        task = self._tasks.get(hdr[1])
        if task is None:
            task = self._new_task(hdr[0], hdr[1])
        self.counters["spte_changes"] += 1  # _changed, minus one call
        if new == self._frozen:
            self._frozen_child(task, level, gfn, old, ln)
        else:
            self._change(task, level, gfn, old, new, ln)
        if self.records >= self._next_sample:
            self._sample_at(ln, ts)

    def _pushed(self, apply: Callable[..., None], *fields: str) -> Callable[..., None]:
        """The ``_drive`` handler of an event whose record :meth:`feed` would pass to
        ``apply(task, lineno, *fields)`` (the record's values of those fields)."""
        tasks = self._tasks

        @wants(*fields)
        def handler(line: str, ln: int, hdr: tuple[Any, ...], ts: str, *fields: Any) -> None:
            self._line = line
            self.records += 1
            task = tasks.get(hdr[1])
            if task is None:
                task = self._new_task(hdr[0], hdr[1])
            apply(task, ln, *fields)
            if self.records >= self._next_sample:
                self._sample_at(ln, ts)
        return handler

    @wants()
    def _fast_other(self, line: str, ln: int, hdr: tuple[Any, ...], ts: str) -> None:
        """An event the replayer only counts."""
        self.records += 1
        if self.records >= self._next_sample:
            self._sample_at(ln, ts)

    def _drive_handlers(self) -> dict[str, Callable[..., None]]:
        """``TraceParser._drive`` handlers: every event whose record :meth:`feed` would
        only count, plus the hot ones (SPTE changes and installs, faults)."""
        out: dict[str, Callable[..., None]] = {
            cls.EVENT: self._fast_other for cls in EVENT_CLASSES.values()
            if cls not in self._handlers}
        out[KvmTdpMmuSpteChanged.EVENT] = self._fast_changed
        out[KvmMmuSetSpte.EVENT] = self._pushed(self._set_spte_fields, "gfn", "spte", "level",
                                                 "sptep")
        out[KvmPageFault.EVENT] = self._pushed(self._page_fault, "vcpu_id", "fault_address")
        out[FastPageFault.EVENT] = self._pushed(self._fast_page_fault, "cr2_or_gpa", "sptep",
                                                "old_spte", "new_spte", "fixed")
        return out

    def record_parse_error(self, err: TraceParseError) -> None:
        self._anomaly("parse_error", f"field '{err.field}': {err.reason}",
                      [TraceLineRef(err.filename, err.lineno, err.line)], current=False)

    def finish(self, parse_stats: TraceStats | None = None,
               parse_error: TraceParseError | None = None) -> ReplayResult:
        for task in self._tasks.values():
            if task.removals:
                self._close_removals(task)
            self._check_pending_split(task, None)
        if not self.samples or self.samples[-1].lineno != self._last_line:
            self._append_sample(self._last_line, self._last_ts)
        roots = [RootInfo(r.root_id, r.kind or "unknown", r.level, r.valid, r.lineno,
                          r.learning, r.changes, len(r.tables)) for r in self._roots]
        return ReplayResult(self.filename, list(self.pages), list(self.samples),
                            dict(self.actors), dict(self.counters), list(self.anomalies),
                            dict(self.anomaly_counts), roots, parse_stats, self.records,
                            self._learning, parse_error, self.profile.name, self.vendor,
                            self.inference)

    # --- helpers ------------------------------------------------------------------------

    _last_line = 0

    def _new_task(self, comm: str, pid: int) -> _Task:
        m = _VCPU_COMM.fullmatch(comm)
        label = f"vcpu{m.group(1)}" if m else f"{comm}-{pid}"
        task = _Task(label, self._actor(label))
        self._tasks[pid] = task
        return task

    def _actor(self, label: str) -> ActorStats:
        st = self.actors.get(label)
        if st is None:
            st = self.actors[label] = ActorStats()
        return st

    def _sample(self, rec: TraceRecord) -> None:
        try:
            ts = rec.timestamp_ns
        except ValueError:
            ts = 0
        self._append_sample(rec.lineno, ts)
        self._next_sample = self.records + self._sample_every

    def _sample_at(self, lineno: int, timestamp: str) -> None:
        """:meth:`_sample` from a parsed line's values."""
        try:
            ts = timestamp_to_ns(timestamp)
        except ValueError:
            ts = 0
        self._append_sample(lineno, ts)
        self._next_sample = self.records + self._sample_every

    def _append_sample(self, lineno: int, ts: int) -> None:
        p = self.pages
        self.samples.append(PageSample(lineno, ts, p[0], p[1], p[2]))
        if len(self.samples) > self.opts.max_samples:
            # Keep memory flat: halve the resolution.
            self.samples = self.samples[::2]
            self._sample_every *= 2

    def _anomaly(self, kind: str, message: str, refs: list[TraceLineRef] | None = None,
                 lineno: int = 0, current: bool = True, also: Iterable[int] = ()) -> None:
        self.anomaly_counts[kind] = self.anomaly_counts.get(kind, 0) + 1
        if len(self.anomalies) >= self.opts.max_anomalies:
            return
        lines = list(refs or [])
        if current:
            lines.insert(0, TraceLineRef(self.filename, lineno, self._current_line()))
        for ln in also:
            if ln and all(r.lineno != ln for r in lines):
                lines.append(TraceLineRef(self.filename, ln, None))
        self.anomalies.append(Anomaly(kind, message, lines))

    def _negative(self, level: int, ln: int) -> None:
        """A page count below zero: more leaves left than the trace installed.  Only a
        delta in learning mode (the trace started after the VM was built)."""
        if self._learning or level in self._negative_levels:
            return
        self._negative_levels.add(level)
        name = ("pages_4k", "pages_2m", "pages_1g")[level - 1]
        self._anomaly("negative_pages", f"{name} went below zero ({self.pages[level - 1]})",
                      lineno=ln)

    def _kind(self, root: _Root) -> str:
        return root.kind or "direct"

    # --- roots --------------------------------------------------------------------------

    def _on_get_page(self, rec: KvmMmuGetPage, task: _Task) -> None:
        self._pre(task, rec.lineno)
        level = rec.level
        if rec.gfn not in (0, None) or level < 4:
            return  # a child page; the link that follows says where it goes
        if level > self._root_level and not self._roots:
            self._root_level = level
        if level != self._root_level:
            return
        role = rec.role
        if rec.style == "raw":
            kind: str | None = "mirror" if rec.is_mirror else "direct"
            if rec.is_mirror:
                self._tdx = True
        else:
            kind = None
        valid = [r for r in self._roots if r.valid and not r.learning]
        if kind is None:
            if self._tdx is None and len(valid) == 1 and valid[0].changes == 0 \
                    and valid[0].kind is None and valid[0].role == role:
                # Two roots with the same visible role, back to back, before any change:
                # mmu_alloc_direct_roots() of a TD (mirror first).  A plain VM would have
                # reused the valid root instead of allocating one.
                self._tdx = True
                valid[0].kind = "mirror"
                kind = "direct"
            elif self._tdx:
                kind = "direct" if any(r.kind == "mirror" for r in valid) else "mirror"
        # kvm_tdp_mmu_alloc_root only allocates when no valid root has this role word, so
        # older roots of the same kind have been invalidated (fast zap).
        for r in valid:
            if (r.kind or "direct") == (kind or "direct"):
                r.valid = False
        root = _Root(len(self._roots), kind, level, rec.lineno, False, role)
        self._roots.append(root)
        self._put_table(root, _table_key(0, level), _Table(root, level, 0, None, self._nonpresent))
        self.counters["root_pages"] += 1

    def _learning_root(self, task: _Task) -> _Root:
        kind = task.fault_kind
        for r in self._roots:
            if r.learning and r.kind == kind:
                return r
        self._learning = True
        root = _Root(len(self._roots), kind, self._root_level, 0, True, None)
        self._roots.append(root)
        return root

    # --- the main event ------------------------------------------------------------------

    def _on_changed(self, rec: KvmTdpMmuSpteChanged, task: _Task) -> None:
        self._changed(task, rec.level, rec.gfn, rec.old_spte, rec.new_spte, rec.lineno)

    def _changed(self, task: _Task, level: int, gfn: int, old: int, new: int, ln: int) -> None:
        """``kvm_tdp_mmu_spte_changed`` — ``handle_changed_spte``'s trace (§4.4)."""
        self.counters["spte_changes"] += 1
        if new == self._frozen:
            self._frozen_child(task, level, gfn, old, ln)
            return
        self._change(task, level, gfn, old, new, ln)

    def _change(self, task: _Task, level: int, gfn: int, old: int, new: int, ln: int) -> None:
        """One SPTE change that is not the freeze of a removed table's child."""
        if task.removals:
            self._close_removals(task)
        if task.pending_split is not None:
            self._check_pending_split(task, None)
        self._last_line = ln
        if not PG_LEVEL_4K <= level <= 5:
            self._anomaly("bad_level", f"level {level} outside 1..5", lineno=ln)
            return
        shift = (level - 1) * 9  # KVM_PAGES_PER_HPAGE(level) == 1 << shift
        if gfn & ((1 << shift) - 1):
            self._anomaly("misaligned", f"gfn {gfn:#x} not aligned to level {level}", lineno=ln)
        idx = (gfn >> shift) & 511
        # Candidate tables: one per root that has a table here.
        match = None
        nmatch = 0
        first = None
        tables = self._at.get(((gfn >> (shift + 9)) << 3) | level, ())
        ntables = len(tables)
        if ntables == 1:  # the common case, without the loop
            first = tables[0]
            cur = first.spt[idx]
            if cur == old or cur == UNKNOWN_SPTE:
                nmatch, match = 1, first
        else:
            for t in tables:
                if first is None:
                    first = t
                cur = t.spt[idx]
                if cur == old or cur == UNKNOWN_SPTE:
                    nmatch += 1
                    if match is None:
                        match = t
                    else:
                        match = self._tie_break(match, t, task)
        ambiguous = nmatch > 1
        if match is None:
            if ntables == 0:
                if self._roots and not all(r.learning for r in self._roots):
                    self._anomaly("unknown_table",
                                  f"level {level} gfn {gfn:#x}: no root has a table here",
                                  lineno=ln)
                root = self._learning_root(task)
                match = self._learning_table(root, level, gfn)
            else:
                match = self._mismatch(task, first, idx, ntables, level, gfn, old, ln)
        self._apply(match, idx, old, new, level, gfn, ln, task, ambiguous)

    def _tie_break(self, a: _Table, b: _Table, task: _Task) -> _Table:
        """Two roots hold the same ``old_spte`` here (a non-present SPTE): an install."""
        ra, rb = a.root, b.root
        if ra.valid != rb.valid:
            return a if ra.valid else b
        hint = task.fault_kind
        if hint is not None and self._tdx:
            ka, kb = self._kind(ra), self._kind(rb)
            if ka != kb:
                return a if ka == hint else b
        if task.last_root is ra or task.last_root is rb:
            return a if task.last_root is ra else b
        return a if ra.root_id < rb.root_id else b

    def _learning_table(self, root: _Root, level: int, gfn: int) -> _Table:
        base = gfn & -(1 << (level * 9))
        t = _Table(root, level, base, None, UNKNOWN_SPTE)
        self._put_table(root, _table_key(gfn, level), t)
        return t

    def _put_table(self, root: _Root, key: int, t: _Table) -> None:
        """``root.tables[key] = t``, and the same in the index by key."""
        at = self._at.setdefault(key, [])
        if key in root.tables:
            at[at.index(root.tables[key])] = t
        else:
            i = len(at)
            while i and at[i - 1].root.root_id > root.root_id:
                i -= 1
            at.insert(i, t)
        root.tables[key] = t

    def _drop_table(self, root: _Root, key: int) -> None:
        """``del root.tables[key]``, and the same in the index by key."""
        at = self._at[key]
        at.remove(root.tables.pop(key))
        if not at:
            del self._at[key]

    def _mismatch(self, task: _Task, first: _Table, idx: int, ntables: int, level: int,
                  gfn: int, old: int, ln: int) -> _Table:
        """No root holds ``old_spte``.  Accept hardware A/D updates and the X bit that
        ``make_small_spte`` restores with the NX workaround; else flag and resync."""
        best = first
        for t in self._at[_table_key(gfn, level)]:
            root = t.root
            cur = t.spt[idx]
            if _hw_ad_update(self._ad_mask, cur, old, level):
                self.counters["hw_ad_updates"] += 1
                return t
            if t.split_from and level == PG_LEVEL_4K \
                    and make_spte_executable(self._masks, cur) == old:
                return t
            if task.fault_kind is not None and self._kind(root) == task.fault_kind:
                best = t
        cur = best.spt[idx]
        where = f"root {best.root.root_id} ({best.root.kind or 'unknown'})"
        self._anomaly(
            "old_spte_mismatch",
            f"level {level} gfn {gfn:#x}: old_spte {old:#x} but the replayer holds "
            f"{cur:#x} in {where}" + (f" (one of {ntables} roots)" if ntables > 1 else ""),
            lineno=ln, also=(best.lines[idx],))
        return best

    def _apply(self, t: _Table, idx: int, old: int, new: int, level: int, gfn: int,
               ln: int, task: _Task, ambiguous: bool) -> None:
        root = t.root
        root.changes += 1
        task.last_root = root
        t.spt[idx] = new
        t.lines[idx] = ln
        # is_shadow_present_pte / is_last_spte, inlined (every change comes here)
        was_present = old & SPTE_MMU_PRESENT_MASK != 0 and old != UNKNOWN_SPTE
        is_present = new & SPTE_MMU_PRESENT_MASK != 0
        was_leaf = was_present and (level == PG_LEVEL_4K or old & PT_PAGE_SIZE_MASK != 0)
        is_leaf = is_present and (level == PG_LEVEL_4K or new & PT_PAGE_SIZE_MASK != 0)
        st = task.stats
        c = self.counters
        if is_leaf != was_leaf:
            # kvm_update_page_stats(kvm, level, is_leaf ? 1 : -1)
            self.pages[level - 1] += 1 if is_leaf else -1
            if self.pages[level - 1] < 0:
                self._negative(level, ln)
        if is_leaf:
            kind = self._kind(root)
            if level > self._max[kind]:
                self._anomaly("level_too_high",
                              f"{kind} leaf at level {level} gfn {gfn:#x} (max {self._max[kind]})",
                              lineno=ln)
            if not was_present:
                c["installs"] += 1
                st.installs += 1
                task.last_install = (t, idx, old, new, gfn, level, ambiguous)
            elif not was_leaf:
                self._promotion(t, idx, old, level, gfn, ln, task)
            else:
                if spte_to_pfn(old) != spte_to_pfn(new):
                    self._anomaly("leaf_pfn_change",
                                  f"level {level} gfn {gfn:#x}: present leaf {old:#x} replaced "
                                  f"by {new:#x} (another pfn)", lineno=ln)
                elif root.kind == "mirror":
                    self._anomaly("mirror_leaf_change",
                                  f"mirror leaf at level {level} gfn {gfn:#x} changed "
                                  f"{old:#x} -> {new:#x}", lineno=ln)
                c["leaf_updates"] += 1
            return
        if was_leaf:
            if is_present:
                # A huge leaf became a table: tdp_mmu_split_huge_page linked the 512
                # children it made with make_small_spte (+512 at level-1).
                self._link(t, idx, new, level, gfn, ln, old)
                self.pages[level - 2] += SPTE_ENT_PER_PAGE
                task.pending_split = (gfn, level, old, ln)
            else:
                c["leaf_zaps"] += 1
                st.leaf_zaps += 1
            return
        if was_present:
            # old was a table
            if is_present:
                if spte_to_pfn(old) == spte_to_pfn(new):
                    c["leaf_updates"] += 1  # A/D or W on a non-leaf
                    return
                self._anomaly("table_replaced",
                              f"level {level} gfn {gfn:#x}: table {old:#x} replaced by table "
                              f"{new:#x}", lineno=ln)
                self._detach(t.root, old, level, gfn, ln, task)
                self._link(t, idx, new, level, gfn, ln, None)
                return
            c["table_zaps"] += 1
            st.table_zaps += 1
            self._detach(t.root, old, level, gfn, ln, task)
            return
        if is_present:
            self._link(t, idx, new, level, gfn, ln, None)
            c["links"] += 1
            st.links += 1
        else:
            c["mmio_changes"] += 1

    def _promotion(self, t: _Table, idx: int, old: int, level: int, gfn: int, ln: int,
                   task: _Task) -> None:
        c = self.counters
        c["promotions"] += 1
        task.stats.promotions += 1
        root = t.root
        if root.kind == "mirror":
            c["mirror_promotions"] += 1
            policy = self.opts.policy.mirror_promotion
            if policy != "seamcall":
                self._anomaly(
                    "mirror_promotion",
                    f"mirror table at level {level} gfn {gfn:#x} replaced by a huge leaf "
                    f"(mirror_promotion={policy!r}: "
                    + ("the SEED patch forbids it)" if policy == "disallowed"
                       else "KVM_BUG_ON in set_external_spte_present)"),
                    lineno=ln)
            else:
                # PAGE.PROMOTE merged the children in the TDX module; the hypothetical KVM
                # may free the mirror table without per-child trace events.
                self._detach(root, old, level, gfn, ln, task)
                task.removals[-1].silent = True
                return
        self._detach(root, old, level, gfn, ln, task)

    def _link(self, t: _Table, idx: int, new: int, level: int, gfn: int, ln: int,
              huge: int | None) -> None:
        """A table now hangs below (level, gfn): remember it by pfn and location."""
        root = t.root
        pfn = spte_to_pfn(new)
        child_level = level - 1
        if huge is None:
            child = _Table(root, child_level, gfn, pfn, self._nonpresent)
        else:
            child = _Table(root, child_level, gfn, pfn, 0)
            nx = self.opts.policy.nx_huge_pages
            mk, m = make_small_spte, self._masks
            child.spt = array("Q", [mk(m, huge, child_level, i, ACC_ALL, nx)
                                    for i in range(SPTE_ENT_PER_PAGE)])
            child.lines = array("I", [ln]) * SPTE_ENT_PER_PAGE
            child.split_from = ln
        old_child = root.tables.get(_table_key(gfn, child_level))
        if old_child is not None and old_child.base == gfn:
            self._by_pfn.pop(old_child.pfn, None)
        self._put_table(root, _table_key(gfn, child_level), child)
        self._by_pfn[pfn] = child
        self.counters["child_pages"] += 1

    def _find_child(self, root: _Root, old: int, level: int, gfn: int) -> _Table | None:
        child = self._by_pfn.get(spte_to_pfn(old))
        if child is None or child.root is not root or child.level != level - 1:
            child = root.tables.get(_table_key(gfn, level - 1))
        return child

    def _unlink(self, root: _Root, child: _Table) -> None:
        key = _table_key(child.base, child.level)
        if root.tables.get(key) is child:
            self._drop_table(root, key)
        if child.pfn is not None and self._by_pfn.get(child.pfn) is child:
            del self._by_pfn[child.pfn]

    def _detach(self, root: _Root, old: int, level: int, gfn: int, ln: int,
                task: _Task) -> None:
        """``handle_removed_pt``: the table below is gone; its children must now all be
        frozen by this task (pre-order, depth first)."""
        child = self._find_child(root, old, level, gfn)
        if child is None:
            if not root.learning:
                self._anomaly("unknown_table",
                              f"level {level} gfn {gfn:#x}: removed table (pfn "
                              f"{spte_to_pfn(old):#x}) was never linked", lineno=ln)
            child = _Table(root, level - 1, gfn, spte_to_pfn(old), UNKNOWN_SPTE)
        else:
            self._unlink(root, child)
        self.counters["tables_removed"] += 1
        task.stats.tables_removed += 1
        task.removals.append(_Removal(child, ln))

    def _frozen_child(self, task: _Task, level: int, gfn: int, old: int, ln: int) -> None:
        self._last_line = ln
        removals = task.removals
        while removals:
            r = removals[-1]
            t = r.table
            if t.level == level and t.base <= gfn < t.base + (1 << (level * 9)):
                break
            self._close_removal(removals.pop())
        else:
            if self._traced_freeze_zaps:
                # tdp_mmu_zap_spte_atomic before v6.10: the traced freeze is the zap, and
                # the SHADOW_NONPRESENT_VALUE written after the TLB flush is not traced.
                self.counters["atomic_zaps"] += 1
                self._change(task, level, gfn, old, self._nonpresent, ln)
                return
            self._anomaly("frozen_outside_removal",
                          f"level {level} gfn {gfn:#x} set to FROZEN_SPTE but no table removal "
                          "by this task is in progress", lineno=ln)
            return
        idx = (gfn >> ((level - 1) * 9)) & 511
        spt = t.spt
        cur = spt[idx]
        if cur != old and cur != UNKNOWN_SPTE:
            if not _hw_ad_update(self._ad_mask, cur, old, level):
                self._anomaly("old_spte_mismatch",
                              f"level {level} gfn {gfn:#x} (child of a removed table): old_spte "
                              f"{old:#x} but the replayer holds {cur:#x}",
                              lineno=ln, also=(t.lines[idx], r.lineno))
            else:
                self.counters["hw_ad_updates"] += 1
        spt[idx] = self._frozen
        t.lines[idx] = ln
        self.counters["frozen_children"] += 1
        r.frozen += 1
        # is_shadow_present_pte(old) / is_last_spte(old, level), inlined (hot path)
        if old & SPTE_MMU_PRESENT_MASK and old != UNKNOWN_SPTE:
            if level == PG_LEVEL_4K or old & PT_PAGE_SIZE_MASK:
                self.pages[level - 1] -= 1
                if self.pages[level - 1] < 0:
                    self._negative(level, ln)
            else:
                self._detach(t.root, old, level, gfn, ln, task)

    def _close_removal(self, r: _Removal) -> None:
        t = r.table
        # is_shadow_present_pte(v), inlined: this runs over 512 entries per removed table
        left = [i for i, v in enumerate(t.spt)
                if v & SPTE_MMU_PRESENT_MASK and v != UNKNOWN_SPTE]
        if left and r.silent and not r.frozen:
            for i in left:
                if is_last_spte(t.spt[i], t.level):
                    self.pages[t.level - 1] -= 1
            return
        if left:
            step = KVM_PAGES_PER_HPAGE(t.level)
            gfns = ", ".join(f"{t.base + i * step:#x}" for i in left[:4])
            self._anomaly(
                "zap_leak",
                f"table level {t.level} gfn {t.base:#x} removed but {len(left)} present "
                f"children were never frozen (gfn {gfns}{', ...' if len(left) > 4 else ''})",
                lineno=r.lineno, current=False,
                refs=[TraceLineRef(self.filename, r.lineno, None)],
                also=(t.lines[left[0]],))
            # Their stats go with the table, as handle_removed_pt would have done.
            for i in left:
                if is_last_spte(t.spt[i], t.level):
                    self.pages[t.level - 1] -= 1

    def _close_removals(self, task: _Task) -> None:
        removals = task.removals
        while removals:
            self._close_removal(removals.pop())

    # --- the other events ------------------------------------------------------------

    def _pre(self, task: _Task, ln: int, split: bool = False) -> None:
        """Any event of a task that is not part of a table removal ends that removal."""
        self._last_line = ln
        if task.removals:
            self._close_removals(task)
        if task.pending_split is not None and not split:
            self._check_pending_split(task, None)

    def _check_pending_split(self, task: _Task, rec: TraceRecord | None) -> None:
        # A leaf -> table change is always followed by kvm_mmu_split_huge_page from the
        # same task; only complain once the trace has shown split events are enabled.
        ps = task.pending_split
        task.pending_split = None
        if ps is not None and self.counters["splits"] + self.counters["split_failures"]:
            self._anomaly("split_mismatch",
                          f"level {ps[1]} gfn {ps[0]:#x}: huge leaf became a table without "
                          "kvm_mmu_split_huge_page", lineno=ps[3], current=False,
                          refs=[TraceLineRef(self.filename, ps[3], None)])

    def _on_split(self, rec: KvmMmuSplitHugePage, task: _Task) -> None:
        """``kvm_mmu_split_huge_page``: the stats moved with the link before it."""
        self._pre(task, rec.lineno, True)
        ps = task.pending_split
        task.pending_split = None
        if rec.errno:
            self.counters["split_failures"] += 1
            task.stats.split_failures += 1
            return
        self.counters["splits"] += 1
        task.stats.splits += 1
        if ps is None or ps[0] != rec.gfn or ps[1] != rec.level or ps[2] != rec.spte:
            self._anomaly("split_mismatch",
                          f"level {rec.level} gfn {rec.gfn:#x}: successful split of "
                          f"{rec.spte:#x} without the matching leaf → table SPTE change",
                          lineno=rec.lineno)

    def _on_prepare_zap(self, rec: KvmMmuPrepareZapPage, task: _Task) -> None:
        self._last_line = rec.lineno
        for r in reversed(task.removals):
            t = r.table
            if not r.prepared and t.level == rec.level and (rec.gfn is None or rec.gfn == t.base):
                r.prepared = True
                return
        self._anomaly("prepare_zap_mismatch",
                      f"kvm_mmu_prepare_zap_page level {rec.level} gfn "
                      f"{'?' if rec.gfn is None else hex(rec.gfn)} matches no table this task "
                      "just removed", lineno=rec.lineno)

    def _on_set_spte(self, rec: KvmMmuSetSpte, task: _Task) -> None:
        self._set_spte(task, rec.gfn, rec.spte, rec.level, rec.sptep, rec.lineno)

    def _set_spte_fields(self, task: _Task, ln: int, gfn: int, spte: int, level: int,
                         sptep: int) -> None:
        self._set_spte(task, gfn, spte, level, sptep, ln)

    def _set_spte(self, task: _Task, gfn: int, spte: int, level: int, at: int, ln: int) -> None:
        """``kvm_mmu_set_spte``: ``at`` names the table, hence the root (§8.2)."""
        self._pre(task, ln)
        t = self._by_pfn.get(at >> PAGE_SHIFT)
        li = task.last_install
        task.last_install = None
        if t is None:
            return
        idx = (at & 0xFFF) >> 3
        if t.level != level or SPTE_INDEX(gfn, level) != idx \
                or not t.base <= gfn < t.base + (1 << (level * 9)):
            self._anomaly("set_spte_mismatch",
                          f"set_spte level {level} gfn {gfn:#x} at {at:#x}, but that "
                          f"address is entry {idx} of the level-{t.level} table at gfn "
                          f"{t.base:#x}", lineno=ln)
            return
        cur = t.spt[idx]
        if cur == spte or cur == UNKNOWN_SPTE:
            if cur == UNKNOWN_SPTE:
                t.spt[idx] = spte
            return
        if li is not None and li[0] is not t and li[4] == gfn and li[5] == level \
                and cur == li[2] and li[3] == spte:
            # The install went to the wrong one of several roots holding the same
            # non-present SPTE: move it where 'at' says it is.
            wrong, widx = li[0], li[1]
            wrong.spt[widx] = li[2]
            t.spt[idx] = spte
            t.lines[idx] = wrong.lines[widx]
            wrong.root.changes -= 1
            t.root.changes += 1
            self.counters["reattributed"] += 1
            task.last_root = t.root
            return
        self._anomaly("set_spte_mismatch",
                      f"set_spte level {level} gfn {gfn:#x} spte {spte:#x}, but the "
                      f"replayer holds {cur:#x} at {at:#x}", lineno=ln,
                      also=(t.lines[idx],))

    def _on_mark_mmio(self, rec: MarkMmioSpte, task: _Task) -> None:
        self._pre(task, rec.lineno)
        task.last_install = None

    def _on_page_fault(self, rec: KvmPageFault, task: _Task) -> None:
        self._page_fault(task, rec.lineno, rec.vcpu_id, rec.fault_address)

    def _page_fault(self, task: _Task, ln: int, vcpu_id: int | None, fault_address: int) -> None:
        """``kvm_page_fault``: the only text with the TDX shared bit (§2.4)."""
        self._pre(task, ln)
        self.counters["faults"] += 1
        if vcpu_id is not None and not task.label.startswith("vcpu"):
            task.label = f"vcpu{vcpu_id}"
            task.stats = self._actor(task.label)
        task.stats.faults += 1
        shared_bit = 1 << (47 if self._root_level == 4 else 51)
        if fault_address & shared_bit:
            # Only a hint: a shared bit alone does not prove a TD (GPA bit 47 can be RAM).
            task.fault_kind = "direct"
        else:
            task.fault_kind = "mirror" if self._tdx else "direct"

    def _on_entry(self, rec: KvmEntry, task: _Task) -> None:
        self._pre(task, rec.lineno)
        task.fault_kind = None
        task.last_install = None

    def _on_fast_page_fault(self, rec: FastPageFault, task: _Task) -> None:
        self._fast_page_fault(task, rec.lineno, rec.cr2_or_gpa, rec.sptep, rec.old_spte,
                              rec.new_spte, rec.fixed)

    def _fast_page_fault(self, task: _Task, ln: int, cr2_or_gpa: int, sptep: int, old: int,
                         new: int, fixed: bool) -> None:
        """``fast_page_fault`` fixes a leaf with a cmpxchg that ``handle_changed_spte``
        never sees: apply it by ``sptep``."""
        self._pre(task, ln)
        if not fixed:
            return
        self.counters["fast_fixed"] += 1
        task.stats.fast_fixed += 1
        t = self._by_pfn.get(sptep >> PAGE_SHIFT)
        idx = (sptep & 0xFFF) >> 3
        if t is None or t.spt[idx] != old:
            found = self._fast_pf_leaf(cr2_or_gpa >> PAGE_SHIFT, old)
            if found is None:
                return
            t, idx = found
        t.spt[idx] = new
        t.lines[idx] = ln

    def _fast_pf_leaf(self, gfn: int, old: int) -> tuple[_Table, int] | None:
        """The leaf a fast_page_fault fixed, found by its gfn and old value: ``sptep`` is
        printed with ``%p``, hashed on hosts without ``no_hash_pointers``.  The gpa of a
        TD's shared access carries the shared bit, which table gfns do not."""
        shared = 1 << ((47 if self._root_level == 4 else 51) - PAGE_SHIFT)
        for g in (gfn, gfn & ~shared):
            for level in (PG_LEVEL_4K, PG_LEVEL_4K + 1, PG_LEVEL_4K + 2):
                key, idx = _table_key(g, level), SPTE_INDEX(g, level)
                for t in self._at.get(key, ()):
                    if t.spt[idx] == old and is_last_spte(old, level):
                        return t, idx
        return None


# ---------------------------------------------------------------------------------------
# Drivers
# ---------------------------------------------------------------------------------------


def replay_records(records: Iterable[TraceRecord], options: ReplayOptions | None = None,
                   *, filename: str = "<records>") -> ReplayResult:
    """Replay already-parsed records (no line texts in the anomalies)."""
    rp = TraceReplayer(options, filename=filename)
    feed = rp.feed
    for rec in records:
        feed(rec)
    return rp.finish()


def replay_trace(source: str | os.PathLike[str] | Iterable[str],
                 options: ReplayOptions | None = None, *, skip_bad: bool = False,
                 filename: str | None = None, resolve_lines: bool = True,
                 progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Parse and replay a trace file (path) or an iterable of lines, streaming.

    A bad line raises :class:`TraceParseError` unless ``skip_bad`` (then it is counted in
    ``result.parse_stats`` and listed as a ``parse_error`` anomaly).  With a path and
    ``resolve_lines``, a second pass fills in the text of earlier lines that anomalies
    point at (the line being replayed is captured as it goes).  With a path,
    ``progress(bytes_read)`` is called every few thousand lines.
    """
    return _replay(source, options, skip_bad=skip_bad, filename=filename,
                   resolve_lines=resolve_lines, fast=True, progress=progress)


def _reporting(f: Any, progress: Callable[[int], None]) -> Iterator[str]:
    """The lines of text file ``f``, calling ``progress`` with the bytes read so far
    every 16384 lines (the binary buffer's position: the text layer's tell() is not
    allowed while iterating)."""
    buf = f.buffer
    for n, line in enumerate(f):
        if not n & 0x3FFF:
            progress(buf.tell())
        yield line


def _replay(source: str | os.PathLike[str] | Iterable[str], options: ReplayOptions | None,
            *, skip_bad: bool, filename: str | None, resolve_lines: bool,
            fast: bool, progress: Callable[[int], None] | None = None) -> ReplayResult:
    """:func:`replay_trace`.  ``fast=False`` is the reference implementation (records
    from iterating the reference parser, fed one by one), kept for tests."""
    if filename is None:
        filename = os.fspath(source) if isinstance(source, (str, os.PathLike)) \
            else str(getattr(source, "name", "<stream>"))
    is_path = isinstance(source, (str, os.PathLike))
    options = options or ReplayOptions()
    inference = None
    if options.profile is None or options.vendor is None:
        source, inference = _infer(source, is_path, filename)
        options = replace(options, profile=options.profile or inference.profile,
                          vendor=options.vendor or inference.vendor)
    f = open(source, encoding="utf-8", errors="replace") if is_path else None
    try:
        if fast:
            # The parser pushes: the hot events as plain values, the rest as records; the
            # line being replayed is kept for the anomalies that point at it.
            rp = TraceReplayer(options, filename=filename)
            rp._current_line = lambda: None if rp._line is None else rp._line.rstrip("\r\n")
            parser = TraceParser(f if f is not None else source,  # type: ignore[arg-type]
                                 skip_bad=skip_bad, filename=filename)
            feed = rp.feed

            def sink(rec: TraceRecord, line: str) -> None:
                rp._line = line
                feed(rec)

            lines = f if f is not None else source
            if f is not None and progress is not None:
                lines = _reporting(f, progress)
            parser._drive(lines, sink, rp._drive_handlers())
        else:
            cur: list[str | None] = [None]

            def tap(lines: Iterable[str]) -> Iterator[str]:
                for line in lines:
                    cur[0] = line
                    yield line

            rp = TraceReplayer(options, filename=filename,
                               current_line=lambda: None if cur[0] is None
                               else cur[0].rstrip("\r\n"))
            parser = TraceParser(tap(f if f is not None else source),  # type: ignore[arg-type]
                                 skip_bad=skip_bad, filename=filename)
            parser._use_reference = True
            feed = rp.feed
            for rec in parser:
                feed(rec)
    finally:
        if f is not None:
            f.close()
    for bad in parser.stats.bad_examples:
        rp.record_parse_error(TraceParseError(bad.filename, bad.lineno, bad.line, bad.field,
                                              bad.reason))
    extra = parser.stats.bad_lines - len(parser.stats.bad_examples)
    if extra > 0:
        rp.anomaly_counts["parse_error"] = rp.anomaly_counts.get("parse_error", 0) + extra
    rp.inference = inference
    result = rp.finish(parser.stats)
    if is_path and resolve_lines:
        _resolve_texts(source, result)  # type: ignore[arg-type]
    return result


def _infer(source: Any, is_path: bool, filename: str) -> tuple[Any, KernelInference]:
    """Infer the kernel from the head of the trace; a stream's head is kept and chained
    back in front of the rest, so nothing is read twice from it."""
    if is_path:
        with open(source, encoding="utf-8", errors="replace") as f:
            return source, infer_kernel(f, filename=filename)
    it = iter(source)
    head = list(islice(it, MAX_SCAN_LINES))
    return chain(head, it), infer_kernel(head, filename=filename)


def _resolve_texts(path: str | os.PathLike[str], result: ReplayResult) -> None:
    want = {ref.lineno for a in result.anomalies for ref in a.lines if ref.text is None}
    if not want:
        return
    texts: dict[int, str] = {}
    last = max(want)
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if n in want:
                texts[n] = line.rstrip("\r\n")
            if n >= last:
                break
    for a in result.anomalies:
        a.lines = [TraceLineRef(r.filename, r.lineno, texts.get(r.lineno, r.text))
                   if r.text is None else r for r in a.lines]
