"""Side-by-side views of runs (one column per policy), built with rich.

Rows are the numbers KVM/TDX developers ask for: mappings by size, faults by RET_PF_*
result, EPT violations, SEAMCALLs by leaf, BUSY retries, TRACKs/epochs, TLB flushes,
mmu_lock acquisitions, 4K accepts where 2M was possible, what ``disallowed_hugepage_adjust``
decided and what the promotion opportunities became, huge-page coverage, estimated cost.

``compare_view`` answers at a glance: a verdict line, the presets that are identical on
every metric, then only the rows that differ (delta against the first preset, published
figure where the workload names one) — a table when it fits the console, one block per
metric when it does not.  Everything printed is deterministic (no wall-clock times).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tdpsim.sim.policies import PRESETS
from tdpsim.sim.runner import RunResult


def _fmt_us(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.1f} µs"


def _fmt_pct(x: float) -> str:
    return f"{x:.1%}"


@dataclass(frozen=True)
class Row:
    """One metric across the runs: ``id`` is the counter name (``key@stage`` for a stage
    total), ``values`` the raw numbers (or text), ``fmt`` how to print one."""

    id: str
    label: str
    values: tuple[Any, ...]
    fmt: Callable[[Any], str] = str

    @property
    def cells(self) -> list[str]:
        return [self.fmt(v) for v in self.values]

    @property
    def differs(self) -> bool:
        return len(set(self.cells)) > 1

    def delta(self, i: int) -> str:
        """The run's difference from the first run, in the row's own unit."""
        a, b = self.values[0], self.values[i]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        if not numbers or a == b:
            return ""
        d = b - a
        if self.fmt is _fmt_pct:
            return f"{d * 100:+.1f} pt"
        if isinstance(d, int):
            return f"{d:+d}"
        return ("+" if d > 0 else "-") + self.fmt(abs(d))


def _leaves(results: Sequence[RunResult]) -> list[str]:
    return sorted({k[len("seamcall."):] for r in results for k in r.totals
                   if k.startswith("seamcall.") and ".TDX_" not in k})


def _keys(results: Sequence[RunResult], prefix: str) -> list[str]:
    return sorted({k for r in results for k in r.totals if k.startswith(prefix)})


def metric_rows(results: Sequence[RunResult]) -> list[Row]:
    """Every row of the comparison, in display order."""
    def row(label: str, key: str) -> Row:
        return Row(key, label, tuple(r.totals.get(key, 0) for r in results))

    td = any(r.vm["kind"] == "td" for r in results)
    rows = [Row("status", "status", tuple(r.status if r.ok else "BUGGED" for r in results))]
    if td:  # the seed patch's question first
        rows += [
            row("promotion opportunities", "promote.opportunities"),
            row("goal lowered, mirror root", "hugepage_adjust.lowered.mirror"),
            row("adjust consulted, mirror", "hugepage_adjust.calls.mirror"),
            row("PROMOTE tried", "promote.tried"), row("PROMOTE done", "promote.done"),
            *(row("PROMOTE failed " + k[len("promote.failed.TDX_"):], k)
              for k in _keys(results, "promote.failed.")),
            row("2M MiB left small by them", "promote.lost_2m_mib"),
        ]
    rows += [
        row("goal lowered, direct root", "hugepage_adjust.lowered.direct"),
        row("adjust consulted, direct", "hugepage_adjust.calls.direct"),
        row("pages_4k (end)", "pages_4k"), row("pages_2m (end)", "pages_2m"),
        row("pages_1g (end)", "pages_1g"), row("2M mappings made", "mappings_2m"),
        Row("mappings_2m@kernel", "2M mappings, kernel stage",
            tuple(r.stage_total("mappings_2m", "kernel") for r in results)),
        row("1G mappings made", "mappings_1g"),
        Row("coverage.mapped", "huge coverage of mapped",
            tuple(r.coverage["huge_share_of_mapped"] for r in results), _fmt_pct),
        Row("coverage.memory", "huge coverage of memory",
            tuple(r.coverage["huge_share_of_memory"] for r in results), _fmt_pct),
        row("EPT violations", "ept_violations"),
        row("faults taken", "pf.taken"), row("RET_PF_FIXED", "pf.fixed"),
        row("RET_PF_SPURIOUS", "pf.spurious"), row("RET_PF_RETRY", "pf.retry"),
        row("RET_PF_EMULATE", "pf.emulate"), row("fast page faults", "pf.fast"),
        row("mmu_lock read", "mmu_lock.read"), row("mmu_lock write", "mmu_lock.write"),
        row("TLB flush requests", "tlb.remote_flush_requests"),
        row("TLB flushes (IPI'd)", "tlb.remote_flush"),
        row("NX lpage splits", "nx.lpage_splits"), row("NX recovered", "nx.recovered"),
    ]
    if td:
        rows += [
            row("4K accepts where 2M possible", "accept.4k_where_2m_possible"),
            row("4K accept exits", "accept.4k_exits"),
            row("2M accept exits", "accept.2m_exits"),
            row("2M accepts: SIZE_MISMATCH", "guest.size_mismatch_fallbacks"),
            row("accept-level write locks", "tdx.accept_level_write_locks"),
            row("TRACKs", "track"), row("TD epoch", "td_epoch"),
            row("TD TLB flushes (module)", "tlb.td_flushes"),
            row("kicks", "tdx.kicks"), row("BUSY retries", "busy_retries"),
            row("MapGPA chunks", "guest.mapgpa_chunks"),
            *(row(f"SEAMCALL {leaf}", f"seamcall.{leaf}") for leaf in _leaves(results)),
        ]
    rows += [row("KVM_BUG_ON", "bugs"), row("WARN", "warnings")]
    rows.append(Row("walk_refs", "est. walk refs/TLB miss",
                    tuple(r.translation["walk_refs_per_miss"] for r in results),
                    lambda v: f"{v:.1f}"))
    rows.append(Row("tlb_reach", "est. TLB reach",
                    tuple(r.translation["tlb_reach_mib"] for r in results),
                    lambda v: f"{v:.0f} MiB"))
    for p in results[0].phases:
        rows.append(Row(f"time@{p.name}", f"est. time: {p.name}",
                        tuple(r.cost[p.name]["total"] if p.name in r.cost else None
                              for r in results),
                        lambda v: "—" if v is None else _fmt_us(v)))
    rows.append(Row("time", "est. time: total", tuple(r.total_cost_us() for r in results),
                    _fmt_us))
    return rows


def comparison_rows(results: Sequence[RunResult]) -> list[tuple[str, list[str]]]:
    """(label, one cell per run) for every row of the comparison."""
    return [(r.label, r.cells) for r in metric_rows(results)]


def identical_groups(results: Sequence[RunResult], rows: Sequence[Row]) -> list[list[int]]:
    """Runs that agree on every row, grouped (first member first, in column order)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(results)):
        groups.setdefault(tuple(r.cells[i] for r in rows), []).append(i)
    return sorted(groups.values())


def verdict(results: Sequence[RunResult], rows: Sequence[Row]) -> list[str]:
    """The answer in words: how many metrics differ, which presets are the same, and the
    promotion opportunities the question is about (with the counts that explain a 0)."""
    diff = [r for r in rows if r.differs]
    names = [r.preset for r in results]
    t0 = results[0].totals
    by_count: dict[int, list[str]] = {}
    for n, r in zip(names, results):
        by_count.setdefault(r.totals.get("promote.opportunities", 0), []).append(n)
    opp = sorted(by_count)
    opp_text = f"{opp[0]} promotion opportunit{'y' if opp == [1] else 'ies'}" \
        if len(opp) == 1 else "promotion opportunities " + "; ".join(
            f"{n} in {', '.join(ps)}" for n, ps in sorted(by_count.items(), reverse=True))
    td = results[0].vm["kind"] == "td"
    opp_text = f": {opp_text} in this workload" if td else ""
    lines = []
    if len(results) == 1:
        lines.append(f"{len(rows)} metrics{opp_text}")
    elif not diff:
        lines.append(f"identical on every metric ({len(rows)}){opp_text}")
    else:
        lines.append(f"the variants differ in {len(diff)} of {len(rows)} metrics{opp_text}")
        for g in identical_groups(results, rows):
            if len(g) > 1:
                lines.append("identical on every metric: " + " = ".join(names[i] for i in g))
        lines += _calls_only(results, rows)
    if opp == [0] and td:
        lines.append(_why_no_opportunity(t0))
    elif td:
        lines += [_what_it_did(results[i]) for i in _representatives(results, rows, False)]
    return lines


def _what_it_did(r: RunResult) -> str:
    """One variant's answer to the faults that met a mirror page table."""
    t = r.totals
    opp, low = t.get("promote.opportunities", 0), t.get("hugepage_adjust.lowered.mirror", 0)
    tried, done = t.get("promote.tried", 0), t.get("promote.done", 0)
    failed = {k[len("promote.failed."):]: v for k, v in t.items()
              if k.startswith("promote.failed.") and v}
    parts = []
    if low:
        parts.append(f"lowered the goal to 4K in {low} of them")
    if tried:
        parts.append(f"tried PAGE.PROMOTE {tried} times, {done} done" + "".join(
            f", {n} failed with {status}" for status, n in sorted(failed.items())))
    if not r.ok:
        parts.append(r.status)
    left = t.get("promote.lost_2m_mib", 0)
    tail = f"; {left} MiB that could be 2M stay mapped small" if left else ""
    return f"{r.preset}: {opp} fault{'' if opp == 1 else 's'} met a mirror page table — " + \
        ("; ".join(parts) or "nothing changed") + tail


def _calls_only(results: Sequence[RunResult], rows: Sequence[Row]) -> list[str]:
    """Runs that differ from the first only in how often disallowed_hugepage_adjust was
    consulted: the same decisions, reached through more calls."""
    out = []
    for i in range(1, len(results)):
        ids = {r.id for r in rows if r.cells[0] != r.cells[i]}
        if ids and all(k.startswith("hugepage_adjust.calls.") for k in ids):
            out.append(f"{results[i].preset} differs from {results[0].preset} only in how "
                       "often it consults disallowed_hugepage_adjust (calls, not decisions)")
    return out


def _why_no_opportunity(t: Mapping[str, int]) -> str:
    """HP-v3's accept-level rule, in the run's own counts: a guest that accepts before it
    touches never faults with a 2M goal where a mirror page table stands."""
    why = ("why none: no fault met a mirror page table at its goal level — the guest "
           f"accepts before it touches; its {t.get('accept.4k_exits', 0)} 4K ACCEPT exits "
           "set GUEST_INHIBIT on their frame before KVM faults")
    mismatch = t.get("guest.size_mismatch_fallbacks", 0)
    if mismatch:
        why += (f", and {mismatch} 2M ACCEPTs met a page table and got "
                "TDX_PAGE_SIZE_MISMATCH without an exit")
    return why


def published_matches(rows: Sequence[Row], published: Mapping[str, str]) -> list[str]:
    """Published figures of rows every run agrees on (the differing ones show theirs in
    the table)."""
    return [f"{r.label}: {r.cells[0]} (published {published[r.id]})"
            for r in rows if r.id in published and not r.differs]


def _representatives(results: Sequence[RunResult], rows: Sequence[Row],
                     show_all: bool) -> list[int]:
    if show_all:
        return list(range(len(results)))
    return sorted(g[0] for g in identical_groups(results, rows))


def _cell(row: Row, i: int) -> str:
    d = row.delta(i) if i else ""
    return row.cells[i] + (f" ({d})" if d else "")


def _table(results: Sequence[RunResult], rows: Sequence[Row], cols: list[int],
           published: Mapping[str, str], title: Optional[str]) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    for i in cols:
        t.add_column(results[i].preset, justify="right")
    pub = any(r.id in published for r in rows)
    if pub:
        t.add_column("published", justify="right")
    for r in rows:
        t.add_row(r.label, *(_cell(r, i) for i in cols),
                  *([published.get(r.id, "")] if pub else []))
    return t


def _blocks(results: Sequence[RunResult], rows: Sequence[Row], cols: list[int],
            published: Mapping[str, str]) -> Group:
    """One block per metric: readable on a narrow console whatever the preset names."""
    width = max(len(results[i].preset) for i in cols)
    parts: list[RenderableType] = []
    for r in rows:
        head = Text(r.label, style="bold")
        if r.id in published:
            head.append(f"   published {published[r.id]}")
        parts.append(head)
        for i in cols:
            d = r.delta(i) if i else ""
            parts.append(Text(f"  {results[i].preset:<{width}}  {r.cells[i]:>10}"
                              + (f"  {d}" if d else "")))
    return Group(*parts)


def _fits(results: Sequence[RunResult], rows: Sequence[Row], cols: list[int],
          published: Mapping[str, str], width: int) -> bool:
    need = 4 + max([len("metric")] + [len(r.label) for r in rows])
    for i in cols:
        need += 3 + max([len(results[i].preset)] + [len(_cell(r, i)) for r in rows])
    if any(r.id in published for r in rows):
        need += 3 + max(len("published"), *(len(published.get(r.id, "")) for r in rows))
    return need <= width


def title_of(results: Sequence[RunResult]) -> str:
    r0 = results[0]
    return (f"{r0.workload}: {r0.vm['kind'].upper()} {r0.vm['vcpus']} vCPUs "
            f"{r0.vm['memory_gib']:g} GiB, seed {r0.seed}, cost params {r0.cost_params!r}")


def compare_view(results: Sequence[RunResult], width: int, *, show_all: bool = False,
                 published: Mapping[str, str] | None = None) -> Group:
    """What ``tdpsim compare`` prints: title, verdict, then the differing rows (every row
    with ``show_all``), as a table if it fits ``width`` columns, else one block per row.
    Deltas are against the first preset."""
    published = published or {}
    rows = metric_rows(results)
    shown = rows if show_all or len(results) == 1 else [r for r in rows if r.differs]
    cols = _representatives(results, rows, show_all)
    parts: list[RenderableType] = [Text(title_of(results), style="bold")]
    parts += [Text(line) for line in verdict(results, rows)]
    same = published_matches(rows, published)
    if same and not show_all:
        parts.append(Text("same in every run: " + "; ".join(same)))
    if not shown:
        return Group(*parts)
    parts.append(Text(""))
    if _fits(results, shown, cols, published, width):
        parts.append(_table(results, shown, cols, published, None))
    else:
        parts.append(_blocks(results, shown, cols, published))
    if not show_all:
        parts.append(Text(f"(only the rows that differ; --all for all {len(rows)})"))
    return Group(*parts)


def comparison_table(results: Sequence[RunResult], title: str | None = None) -> Table:
    """Every row, one column per run."""
    rows = metric_rows(results)
    return _table(results, rows, list(range(len(results))), {}, title or title_of(results))


def presets_table() -> Table:
    """Every preset: what it models, its switches and where it was posted (Message-IDs
    on lines of their own, so they are never cut at any width)."""
    t = Table(title="policy presets (laid over the workload's \\[policy] table)",
              title_justify="left", show_lines=True)
    t.add_column("preset", no_wrap=True)
    t.add_column("models / switches / posted", overflow="fold")
    for p in PRESETS.values():
        name = p.name + "".join(f"\n(was {a})" for a in p.aliases)
        text = Text(p.summary)
        text.append("\n" + ", ".join(f"{k}={v}" for k, v in p.switches.items()), style="dim")
        for posted in filter(None, p.posted.split(", ")):
            text.append("\nposted " + posted, style="cyan")
        t.add_row(name, text)
    return t


def workloads_table(items: Iterable[tuple[str, str]]) -> Table:
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column("name")
    t.add_column("description")
    for name, desc in items:
        t.add_row(name, desc)
    return t
