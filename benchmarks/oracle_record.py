"""Re-record the QEMU TCG oracle: the real TDP MMU of Debian's kernels (not run in CI).

    apt-get install -y --no-install-recommends qemu-system-x86 busybox-static \\
        linux-image-6.1.0-<N>-amd64-unsigned 'linux-image-6.12.<N>+deb12-amd64-unsigned'
    python benchmarks/oracle_record.py 6.1 6.12

A kernel built from linux-source-6.12 with tools/oracle-6.12-tiny.config (tinyconfig plus
KVM_AMD, KVM_SW_PROTECTED_VM, 9p, ftrace; all built in) is recorded with
``python benchmarks/oracle_record.py 6.12 --kernel-image arch/x86/boot/bzImage``.

For each kernel: boot it under QEMU TCG (``tdpsim.kvmcheck.qemu.run_oracle``, niced), run
the oracle matrix inside with kvmmmu tracing, then write the fixture the tests check
(``tests/kvmcheck/data/oracle/<release>/``: facts.json, rows.jsonl, traces/*.trace.xz)
with ``--fixtures`` (default on), and print the rows that match on stats / events.
One line per failure (missing package, no boot, hang, bad row); rows that ran are kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tdpsim.kvmcheck.oracle import check_run, write_fixture
from tdpsim.kvmcheck.qemu import OracleError, run_oracle

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "kvmcheck" / "data" / "oracle"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernels", nargs="+", help="6.1, 6.12 or a release under /boot")
    ap.add_argument("--work", default="/tmp/tdpsim-oracle", help="run directories go here")
    ap.add_argument("--no-fixtures", action="store_true", help="do not write the fixtures")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--kernel-image", help="a kernel you built (then KERNELS is its series)")
    ap.add_argument("--modules", help="its modules directory (none: all built in)")
    ap.add_argument("--only", action="append", default=[])
    a = ap.parse_args(argv)
    status = 0
    for k in a.kernels:
        out = os.path.join(a.work, k)
        t0 = time.monotonic()
        try:
            run = run_oracle(k, out, only=a.only, timeout=a.timeout, image=a.kernel_image,
                             modules=a.modules)
        except OracleError as e:
            print(e)
            status = 2
            continue
        for f in run.failures:
            print(f)
            status = max(status, 1)
        if not run.rows:
            continue
        _, rows = check_run(out)
        ran = [r for r in rows if r.stats is not None and not r.stats.skipped]
        print(f"{run.kernel.release}: {len(rows)} rows in {time.monotonic() - t0:.0f} s "
              f"(QEMU {run.seconds:.0f} s); stats match {sum(r.stats_match is True for r in ran)}"
              f"/{len(ran)}, events match {sum(r.events_match is True for r in ran)}/{len(ran)}")
        for r in rows:
            for m in (r.stats.mismatches if r.stats else [r.error]):
                print(f"  {r.name} stats: {m}")
            for m in r.event_mismatches:
                print(f"  {r.name} events: {m}")
        if not a.no_fixtures:
            # the guest's uname -r (a kernel you built has no /boot name)
            dest = FIXTURES / run.facts.get("kernel_release", run.kernel.release)
            write_fixture(out, dest)
            print(f"  fixture: {dest}")
    return status


if __name__ == "__main__":
    sys.exit(main())
