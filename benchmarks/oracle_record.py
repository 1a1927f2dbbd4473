"""Re-record the QEMU TCG oracle: the real TDP MMU of Debian's kernels (not run in CI).

    apt-get install -y --no-install-recommends qemu-system-x86 busybox-static \\
        linux-image-6.1.0-<N>-amd64-unsigned 'linux-image-6.12.<N>+deb12-amd64-unsigned' \\
        linux-source-6.12 build-essential bc bison flex libelf-dev
    python benchmarks/oracle_record.py 6.1 6.12 6.12-swprot

``6.12-swprot`` is the small 6.12 build with KVM_X86_SW_PROTECTED_VM (Debian's 6.12
config lacks it): linux-source-6.12, ``make tinyconfig`` plus tools/oracle-6.12-tiny.config
(KVM_AMD, KVM_SW_PROTECTED_VM, 9p, ftrace; all built in).  When it is not built yet in
``--build-dir`` (default ``$TDPSIM_ORACLE_BUILD`` or ~/.cache/tdpsim/oracle-build) this
script builds it first and says so (about 25 min on 2 idle cores; later builds are
incremental).  Its matrix adds the private-memory rows (guest_memfd, memory attributes,
PUNCH_HOLE, KVM_PRE_FAULT_MEMORY).  Any other kernel you built:
``python benchmarks/oracle_record.py 6.12 --kernel-image arch/x86/boot/bzImage``.

For each kernel: boot it under QEMU TCG (``tdpsim.kvmcheck.qemu.run_oracle``, niced), run
the oracle matrix inside with kvmmmu tracing, then write the fixture the tests check
(``tests/kvmcheck/data/oracle/<release>/``, ``tiny-<release>/`` for 6.12-swprot:
facts.json, rows.jsonl, traces/*.trace.xz, kernel.config.xz of a built kernel) unless
``--no-fixtures``, and print the rows that match on stats / events.
One line per failure (missing package, failed build, no boot, hang, bad row); rows that
ran are kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tdpsim.kvmcheck.oracle import check_run, write_fixture
from tdpsim.kvmcheck.qemu import (SWPROT, OracleError, build_swprot_kernel, run_oracle,
                                  swprot_build_dir, swprot_kernel_built)

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "kvmcheck" / "data" / "oracle"
#: fixture directory prefix of the 6.12-swprot build (its release is plain "6.12.<N>")
TINY = "tiny-"


def _swprot_image(build_dir: Path, jobs: int) -> str:
    image = swprot_kernel_built(build_dir)
    if image is None:
        print(f"{SWPROT}: not built in {build_dir}: building it from linux-source-6.12 "
              f"(make -j{jobs}; about 25 min on 2 idle cores, log: "
              f"{build_dir}/build-{SWPROT}.log)", flush=True)
        image = build_swprot_kernel(build_dir, jobs=jobs)
    return image


def _report(run, out: str, t0: float) -> None:
    _, rows = check_run(out)
    ran = [r for r in rows if r.stats is not None and not r.stats.skipped]
    release = run.facts.get("kernel_release", run.kernel.release)
    print(f"{release}: {len(rows)} rows in {time.monotonic() - t0:.0f} s "
          f"(QEMU {run.seconds:.0f} s); stats match {sum(r.stats_match is True for r in ran)}"
          f"/{len(ran)}, events match {sum(r.events_match is True for r in ran)}/{len(ran)}, "
          f"replay anomalies {sum(r.replay_anomalies or 0 for r in ran)}")
    for r in rows:
        for m in (r.stats.mismatches if r.stats else [r.error]):
            print(f"  {r.name} stats: {m}")
        for m in r.event_mismatches:
            print(f"  {r.name} events: {m}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernels", nargs="+", help=f"6.1, 6.12, {SWPROT} or a release under /boot")
    ap.add_argument("--work", default="/tmp/tdpsim-oracle", help="run directories go here")
    ap.add_argument("--no-fixtures", action="store_true", help="do not write the fixtures")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--kernel-image", help="a kernel you built (then KERNELS is its series)")
    ap.add_argument("--modules", help="its modules directory (none: all built in)")
    ap.add_argument("--build-dir", type=Path, default=None,
                    help=f"where {SWPROT} is (or gets) built (default: {swprot_build_dir()})")
    ap.add_argument("--jobs", type=int, default=2, help=f"make -j for building {SWPROT}")
    ap.add_argument("--only", action="append", default=[])
    a = ap.parse_args(argv)
    status = 0
    for k in a.kernels:
        out = os.path.join(a.work, k)
        t0 = time.monotonic()
        try:
            image = a.kernel_image
            if k == SWPROT and image is None:
                image = _swprot_image(a.build_dir or swprot_build_dir(), a.jobs)
            run = run_oracle("6.12" if k == SWPROT else k, out, only=a.only, timeout=a.timeout,
                             image=image, modules=a.modules)
        except OracleError as e:
            print(e)
            status = 2
            continue
        for f in run.failures:
            print(f)
            status = max(status, 1)
        if not run.rows:
            continue
        _report(run, out, t0)
        if not a.no_fixtures:
            # the guest's uname -r (a kernel you built has no /boot name)
            release = run.facts.get("kernel_release", run.kernel.release)
            dest = FIXTURES / ((TINY if k == SWPROT else "") + release)
            write_fixture(out, dest)
            print(f"  fixture: {dest}")
    return status


if __name__ == "__main__":
    sys.exit(main())
