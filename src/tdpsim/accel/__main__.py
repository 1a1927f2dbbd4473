"""``python -m tdpsim.accel build|where|check``: build the compiled model, say where it
is, run the byte-identity tests against it."""

from __future__ import annotations

import argparse
import subprocess
import sys

from tdpsim import accel


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m tdpsim.accel",
                                 description=accel.__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the model with mypyc")
    b.add_argument("--jobs", "-j", type=int, default=2)
    sub.add_parser("where", help="print the build directory of these sources")
    sub.add_parser("check", help="run the byte-identity tests against the build")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(accel.build(args.jobs))
    elif args.cmd == "where":
        root = accel.build_dir()
        print(root, "(built)" if root.is_dir() else "(not built)")
    else:
        tests = accel._PKG.parent.parent / "tests" / "test_accel.py"
        return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                str(tests)])
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
