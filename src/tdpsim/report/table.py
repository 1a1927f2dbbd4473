"""Side-by-side tables of runs (one column per policy), built with rich.

Rows are the numbers KVM/TDX developers ask for: mappings by size, faults by RET_PF_*
result, EPT violations, SEAMCALLs by leaf, BUSY retries, TRACKs/epochs, TLB flushes,
mmu_lock acquisitions, 4K accepts where 2M was possible, huge-page coverage, estimated
cost.  Everything printed is deterministic (no wall-clock times), so ``compare`` output
is byte-identical for the same inputs.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from rich.table import Table

from tdpsim.sim.policies import PRESETS
from tdpsim.sim.runner import RunResult


def _fmt_us(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.1f} µs"


def _leaves(results: Sequence[RunResult]) -> list[str]:
    leaves = set()
    for r in results:
        for k in r.totals:
            if k.startswith("seamcall.") and ".TDX_" not in k:
                leaves.add(k[len("seamcall."):])
    return sorted(leaves)


def comparison_rows(results: Sequence[RunResult]) -> list[tuple[str, list[str]]]:
    """(label, one cell per run) for every row of the comparison."""
    def row(label: str, key: str) -> tuple[str, list[str]]:
        return label, [str(r.totals.get(key, 0)) for r in results]

    td = any(r.vm["kind"] == "td" for r in results)
    rows: list[tuple[str, list[str]]] = [
        ("status", [r.status if r.ok else "BUGGED" for r in results]),
        row("pages_4k (end)", "pages_4k"), row("pages_2m (end)", "pages_2m"),
        row("pages_1g (end)", "pages_1g"),
        row("2M mappings made", "mappings_2m"),
        ("2M mappings, kernel stage", [str(r.stage_total("mappings_2m", "kernel"))
                                       for r in results]),
        row("1G mappings made", "mappings_1g"),
        ("huge coverage of mapped", [f"{r.coverage['huge_share_of_mapped']:.1%}"
                                     for r in results]),
        ("huge coverage of memory", [f"{r.coverage['huge_share_of_memory']:.1%}"
                                     for r in results]),
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
            row("accept-level write locks", "tdx.accept_level_write_locks"),
            row("TRACKs", "track"), row("TD epoch", "td_epoch"),
            row("TD TLB flushes (module)", "tlb.td_flushes"),
            row("kicks", "tdx.kicks"), row("BUSY retries", "busy_retries"),
            row("MapGPA chunks", "guest.mapgpa_chunks"),
        ]
        rows += [row(f"SEAMCALL {leaf}", f"seamcall.{leaf}") for leaf in _leaves(results)]
    rows += [row("KVM_BUG_ON", "bugs"), row("WARN", "warnings")]
    rows.append(("est. walk refs/TLB miss", [f"{r.translation['walk_refs_per_miss']:.1f}"
                                             for r in results]))
    rows.append(("est. TLB reach", [f"{r.translation['tlb_reach_mib']:.0f} MiB"
                                    for r in results]))
    phases = [p.name for p in results[0].phases]
    for name in phases:
        rows.append((f"est. time: {name}",
                     [_fmt_us(r.cost[name]["total"]) if name in r.cost else "—"
                      for r in results]))
    rows.append(("est. time: total", [_fmt_us(r.total_cost_us()) for r in results]))
    return rows


def comparison_table(results: Sequence[RunResult], title: str | None = None) -> Table:
    r0 = results[0]
    title = title or (f"{r0.workload}: {r0.vm['kind'].upper()} {r0.vm['vcpus']} vCPUs "
                      f"{r0.vm['memory_gib']:g} GiB, seed {r0.seed}, "
                      f"cost params {r0.cost_params!r}")
    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    for r in results:
        t.add_column(r.preset, justify="right")
    for label, cells in comparison_rows(results):
        t.add_row(label, *cells)
    return t


def presets_table() -> Table:
    t = Table(title="policy presets (laid over the workload's \\[policy] table)", title_justify="left")
    t.add_column("preset")
    t.add_column("switches")
    t.add_column("models")
    for p in PRESETS.values():
        t.add_row(p.name, ", ".join(f"{k}={v}" for k, v in p.switches.items()), p.summary)
    return t


def workloads_table(items: Iterable[tuple[str, str]]) -> Table:
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column("name")
    t.add_column("description")
    for name, desc in items:
        t.add_row(name, desc)
    return t
