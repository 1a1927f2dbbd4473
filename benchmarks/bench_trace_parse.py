"""Benchmark: tdpsim.trace parse throughput and peak memory.

Generates N lines (default 1,000,000) of mixed events -- mostly kvmmmu/kvm events in
the kernel's formats, plus foreign events (sched_switch) and a few comment lines -- into a
temporary file, then parses it (streaming) and "replays" the records trivially (a dispatch
on the record class that touches one field).  Prints figures only.

    PYTHONPATH=src python benchmarks/bench_trace_parse.py [-n N] [--other-ratio R] [--reference]

``--reference`` also times the parser's reference path (no fast path) on the same file.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import tracemalloc

from tdpsim.trace import (
    KvmEntry,
    KvmExit,
    KvmMmuGetPage,
    KvmMmuPrepareZapPage,
    KvmMmuSetSpte,
    KvmMmuSpteRequested,
    KvmPageFault,
    KvmTdpMmuSpteChanged,
    TraceParser,
    format_line,
    make_role,
)


def _records(rng: random.Random, n: int):
    hdr = dict(comm="CPU 0/KVM", pid=4242, flags="d..1.")
    role = make_role(level=1, direct=True, access=7, efer_nx=True)
    for i in range(n):
        gfn = rng.randrange(1 << 20)
        ts = f"{1000 + i // 1000}.{i % 1000000:06d}"
        h = dict(hdr, cpu=i % 8, timestamp=ts)
        k = i % 8
        if k == 0:
            yield KvmExit(i % 4, "EPT_VIOLATION", 0xFFFFFFFF81000000 + gfn, 0x181, 0, 0, 0, **h)
        elif k == 1:
            yield KvmPageFault(i % 4, 0, gfn << 12, 0x2, **h)
        elif k == 2:
            yield KvmMmuSpteRequested(gfn, gfn + 0x100000, 1, **h)
        elif k == 3:
            yield KvmTdpMmuSpteChanged(0, gfn, 1, 0x80000000000005A0, 0x0600000012345907 | gfn << 12, **h)
        elif k == 4:
            yield KvmMmuSetSpte(gfn, 0x0600000012345907 | gfn << 12, 1, 0x10EB9010, True, True, True, 1, **h)
        elif k == 5:
            yield KvmMmuGetPage(0, gfn & ~511, role, 0, False, created=True, **h)
        elif k == 6:
            yield KvmMmuPrepareZapPage(0, gfn & ~511, role, 0, False, **h)
        else:
            yield KvmEntry(i % 4, 0xFFFFFFFF81000000 + gfn, **h)


def generate(path: str, n: int, other_ratio: float, seed: int = 1) -> None:
    """Write exactly n lines: 2 comment lines, then our events interleaved with foreign
    ones so that about ``other_ratio`` of the lines are foreign."""
    rng = random.Random(seed)
    other = ("          <idle>-0       [001] d..2.  1000.000001: sched_switch: "
             "prev_comm=swapper/1 prev_pid=0 prev_prio=120 prev_state=R ==> "
             "next_comm=qemu next_pid=4242 next_prio=120\n")
    body = n - 2
    n_other = int(body * other_ratio)
    recs = _records(rng, body - n_other)
    with open(path, "w") as f:
        f.write("# tracer: nop\n#\n")
        acc = 0.0
        for _ in range(body):
            acc += other_ratio
            if acc >= 1.0 and n_other:
                acc -= 1.0
                n_other -= 1
                f.write(other)
            else:
                rec = next(recs, None)
                if rec is None:
                    f.write(other)
                    continue
                f.write(format_line(rec, style="ftrace"))
                f.write("\n")


def replay(parser: TraceParser) -> int:
    acc = 0
    for rec in parser:
        cls = rec.__class__
        if cls is KvmTdpMmuSpteChanged or cls is KvmMmuSetSpte:
            acc ^= rec.gfn
        elif cls is KvmPageFault:
            acc ^= rec.fault_address
        else:
            acc += 1
    return acc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="number of lines")
    ap.add_argument("--other-ratio", type=float, default=0.2,
                    help="fraction of foreign (non-kvm) event lines")
    ap.add_argument("--mem-lines", type=int, default=200_000,
                    help="lines parsed under tracemalloc for the peak-memory figure")
    ap.add_argument("--reference", action="store_true",
                    help="also time the reference path (no fast path)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.txt")
        t0 = time.perf_counter()
        generate(path, args.n, args.other_ratio)
        t1 = time.perf_counter()
        size = os.path.getsize(path)
        print(f"generated {args.n} lines ({size / 1e6:.1f} MB) in {t1 - t0:.2f} s")

        p = TraceParser(path)
        t0 = time.perf_counter()
        replay(p)
        t1 = time.perf_counter()
        st = p.stats
        dt = t1 - t0
        print(f"parse+replay: {st.lines} lines, {st.parsed} records, "
              f"{st.skipped_other} other, {st.skipped_comments} comments in {dt:.2f} s")
        print(f"lines/s: {st.lines / dt:,.0f}")
        print(f"records/s: {st.parsed / dt:,.0f}")
        if args.reference:
            p = TraceParser(path)
            p._use_reference = True
            t0 = time.perf_counter()
            replay(p)
            dt_ref = time.perf_counter() - t0
            print(f"reference path lines/s: {p.stats.lines / dt_ref:,.0f} "
                  f"(fast path x{dt_ref / dt:.2f})")

        # Peak memory of a streaming run (tracemalloc slows the run; separate pass).
        mem_path = os.path.join(d, "trace_mem.txt")
        generate(mem_path, min(args.mem_lines, args.n), args.other_ratio)
        tracemalloc.start()
        p = TraceParser(mem_path)
        replay(p)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"peak traced memory over {p.stats.lines} lines: {peak / 1024:.1f} KiB")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
