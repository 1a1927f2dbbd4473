"""The oracle harness: boot a Debian kernel under QEMU TCG and run the check matrix on
its KVM (kvm_amd, NPT, the TDP MMU), with kvmmmu tracing.

Nothing is installed here.  The pieces come from Debian packages when present, and a
missing one is named with its package (:class:`OracleError` with step ``packages``):

=====================  =========================================================
what                   package
=====================  =========================================================
qemu-system-x86_64     ``qemu-system-x86``
/bin/busybox (static)  ``busybox-static``
/boot/vmlinuz-<rel>    ``linux-image-6.1.0-<N>-amd64-unsigned`` / ``linux-image-6.12.<N>+deb12-amd64-unsigned``
=====================  =========================================================

(the generic ``-amd64`` images: the ``-cloud-amd64`` ones have no 9p), or a kernel you
built (``--kernel-image`` + ``--modules``).

How the guest is made (:func:`build_initramfs`): a newc cpio with busybox, the modules
for virtio-9p and kvm_amd (dependency closure from ``modules.dep``; ``.ko.xz`` /
``.ko.zst`` are decompressed because busybox ``insmod`` reads neither; busybox ``insmod``
also ignores ``kvm.x=y`` on the kernel command line, so parameters go on the insmod line)
and an ``/init`` script, which ends with ``reboot -f``: QEMU runs with ``-no-reboot``, so
the reset ends it, with or without ACPI (a tinyconfig kernel has none to power off).  The host's ``/`` is shared read-only over 9p (so the guest runs
this very Python and tdpsim), the output directory read-write; both need
``multidevs=remap`` (the host tree spans several devices).  The guest chroots into the
host tree and runs :mod:`tdpsim.kvmcheck.oracle_guest`.

Every step prints ``oracle-step: <step>`` on the serial console (``console.log`` in the
output directory); a failure is one :class:`OracleError` line naming the step and the log.
The rows that did run are in ``rows.jsonl`` whatever happened after them.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

__all__ = ["OracleError", "GuestKernel", "OracleRun", "find_kernel", "module_closure",
           "build_initramfs", "init_script", "qemu_command", "run_oracle", "read_rows",
           "BUSYBOX", "GUEST_MODULES", "DEFAULT_CPU", "KERNEL_PACKAGES", "host_tsc_khz",
           "kernel_config", "tsc_calibration_args", "SWPROT", "SWPROT_BUILD_PACKAGES",
           "swprot_build_dir", "swprot_kernel_built", "build_swprot_kernel", "fragment_options"]

BUSYBOX = "/bin/busybox"
QEMU = "qemu-system-x86_64"
#: modules the guest loads, in this order (each after its dependencies)
GUEST_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "kvm", "kvm_amd")
#: ``-cpu max`` emulates SVM with NPT; without la57 the NPT root is 4-level
DEFAULT_CPU = "max,-la57"
KERNEL_PACKAGES = {
    "6.1": "linux-image-6.1.0-<N>-amd64-unsigned",
    "6.12": "linux-image-6.12.<N>+deb12-amd64-unsigned",
}
#: insmod parameters (busybox insmod does not read kvm.x=y from the command line)
DEFAULT_MODULE_PARAMS = {"kvm": "tdp_mmu=1", "kvm_amd": "npt=1"}
HOST_TAG, OUT_TAG = "tdpsim_host", "tdpsim_out"
#: the small 6.12 build with KVM_X86_SW_PROTECTED_VM (Debian's 6.12 config lacks it):
#: Debian's linux-source-6.12, ``make tinyconfig`` plus this repository's fragment
SWPROT = "6.12-swprot"
SWPROT_SOURCE = "/usr/src/linux-source-6.12.tar.xz"
SWPROT_FRAGMENT = Path(__file__).resolve().parents[3] / "tools" / "oracle-6.12-tiny.config"
SWPROT_BUILD_PACKAGES = "linux-source-6.12 build-essential bc bison flex libelf-dev"


class OracleError(Exception):
    """One step of the oracle failed; ``str()`` is the one line to show."""

    def __init__(self, step: str, why: str, log: Optional[str] = None):
        self.step, self.why, self.log = step, why, log
        super().__init__(f"oracle: step {step} failed: {why}" + (f" (log: {log})" if log else ""))


@dataclass(frozen=True)
class GuestKernel:
    """A kernel image and its modules directory."""

    release: str
    image: str
    modules: str


def _release_key(rel: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.+-]", rel))


def find_kernel(spec: str, *, boot: str = "/boot", lib_modules: str = "/lib/modules",
                image: Optional[str] = None, modules: Optional[str] = None) -> GuestKernel:
    """The newest generic ``-amd64`` kernel whose release starts with *spec* (``6.1``,
    ``6.12``, or a whole release), or the given *image* + *modules* directory."""
    if image or modules:
        if not image:
            raise OracleError("packages", "--modules needs --kernel-image")
        for p in (image, modules):
            if p and not os.path.exists(p):
                raise OracleError("packages", f"{p} does not exist")
        # no modules directory: a kernel with KVM, 9p and virtio built in
        return GuestKernel(os.path.basename(os.path.normpath(modules or image)), image,
                           modules or "")
    found = []
    for path in glob.glob(os.path.join(boot, "vmlinuz-*")):
        rel = os.path.basename(path)[len("vmlinuz-"):]
        if not rel.endswith("-amd64") or rel.endswith("-cloud-amd64") or rel.endswith("-rt-amd64"):
            continue
        head = re.match(r"(\d+\.\d+)", rel)
        if rel == spec or (head and head.group(1) == spec):
            found.append(rel)
    if not found:
        pkg = KERNEL_PACKAGES.get(spec, f"a linux-image-{spec}*-amd64-unsigned package")
        raise OracleError("packages", f"no {spec} kernel in {boot}: apt-get install {pkg} "
                          f"(apt-cache search {pkg.split('<')[0]} lists the <N>)")
    rel = max(found, key=_release_key)
    mods = os.path.join(lib_modules, rel)
    if not os.path.isdir(mods):
        raise OracleError("packages", f"{mods} is missing (reinstall the image package of {rel})")
    return GuestKernel(rel, os.path.join(boot, f"vmlinuz-{rel}"), mods)


def _module_index(modules: str) -> tuple[dict[str, str], dict[str, list[str]], set[str]]:
    """(name -> path relative to *modules*, path -> dependency paths, builtin names)."""
    def name(path: str) -> str:
        return os.path.basename(path).split(".ko")[0].replace("-", "_")
    by_name: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    with open(os.path.join(modules, "modules.dep")) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            mod = mod.strip()
            deps[mod] = rest.split()
            by_name[name(mod)] = mod
    builtin = set()
    try:
        with open(os.path.join(modules, "modules.builtin")) as f:
            builtin = {name(line.strip()) for line in f if line.strip()}
    except OSError:
        pass
    return by_name, deps, builtin


def module_closure(modules: str, names: Iterable[str] = GUEST_MODULES) -> list[str]:
    """The module files (relative to *modules*) to insmod for *names*, dependencies
    first; built-in modules are left out."""
    by_name, deps, builtin = _module_index(modules)
    out: list[str] = []

    def visit(path: str) -> None:
        if path in out:
            return
        # modules.dep lists the full closure, nearest first: load from the far end
        for d in reversed(deps.get(path, [])):
            visit(d)
        out.append(path)
    for n in names:
        key = n.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise OracleError("initramfs", f"module {n} is neither in modules.dep nor built in "
                              f"under {modules}")
        visit(by_name[key])
    return out


def _read_module(path: str) -> bytes:
    data = Path(path).read_bytes()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        try:
            import zstandard  # noqa: PLC0415 - only for .ko.zst trees
        except ImportError:
            raise OracleError("initramfs", f"{path} is zstd-compressed: pip install zstandard") from None
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


class _Cpio:
    """A newc ("070701") cpio archive writer (what the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + nb)
        self.buf.write(b"\0" * (-(110 + len(nb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def init_script(python: str, pythonpath: str, guest_args: Sequence[str],
                module_lines: Sequence[str], hugepages: int = 32) -> str:
    """The guest's ``/init`` (busybox sh)."""
    insmods = "\n".join(f"insmod /modules/{line} || fail insmod \"{line}\"" for line in module_lines)
    args = " ".join(guest_args)
    return f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
step() {{ echo "oracle-step: $*"; }}
fail() {{ echo "oracle-fail: $*"; reboot -f; }}
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
step modules
{insmods}
step mount
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 {HOST_TAG} /host || fail mount {HOST_TAG}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 {OUT_TAG} /host/mnt || fail mount {OUT_TAG}
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mount -t tmpfs tmpfs /host/tmp
mount -t tracefs tracefs /host/sys/kernel/tracing || fail mount tracefs
echo {hugepages} > /proc/sys/vm/nr_hugepages
step run
chroot /host /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp PYTHONPATH={pythonpath} \\
    PYTHONDONTWRITEBYTECODE=1 {python} -m tdpsim.kvmcheck.oracle_guest --out /mnt {args}
echo "oracle-exit: $?"
sync
reboot -f
"""


def build_initramfs(kernel: GuestKernel, dest: str, *, python: str, pythonpath: str,
                    guest_args: Sequence[str] = (), module_params: Mapping[str, str] = DEFAULT_MODULE_PARAMS,
                    busybox: str = BUSYBOX) -> list[str]:
    """Write the initramfs (gzip'd newc cpio) to *dest*; returns the insmod lines."""
    if not os.path.exists(busybox):
        raise OracleError("packages", f"{busybox} is missing: apt-get install busybox-static")
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "modules", "host"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)      # init's stdout before devtmpfs is mounted
    cpio.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    lines = []
    for rel in module_closure(kernel.modules) if kernel.modules else ():
        base = os.path.basename(rel).split(".ko")[0] + ".ko"
        cpio.file(f"modules/{base}", _read_module(os.path.join(kernel.modules, rel)))
        key = base[:-3].replace("-", "_")
        lines.append(f"{base} {module_params.get(key, '')}".strip())
    cpio.file("init", init_script(python, pythonpath, guest_args, lines).encode(), 0o755)
    with open(dest, "wb") as f:
        f.write(gzip.compress(cpio.finish(), 6))
    return lines


def qemu_command(kernel: GuestKernel, initramfs: str, out_dir: str, *, cpu: str = DEFAULT_CPU,
                 memory: str = "1536M", append: str = "", qemu: str = QEMU) -> list[str]:
    """The QEMU TCG command line (one vCPU: the guest runs one VM at a time)."""
    share = "security_model=none,multidevs=remap"
    return [qemu, "-accel", "tcg", "-cpu", cpu, "-smp", "1", "-m", memory,
            "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", kernel.image, "-initrd", initramfs,
            # no_timer_check: under a loaded host TCG can miss the IO-APIC timer check,
            # which panics the boot ("IO-APIC + timer doesn't work!")
            "-append", f"console=ttyS0 panic=-1 loglevel=4 no_timer_check {append}".strip(),
            "-virtfs", f"local,path=/,mount_tag={HOST_TAG},readonly=on,{share}",
            "-virtfs", f"local,path={out_dir},mount_tag={OUT_TAG},{share}"]


def kernel_config(image: str) -> Optional[str]:
    """The ``.config`` of a kernel built in a source tree (*image* is the tree's
    ``arch/x86/boot/bzImage``), or None for a packaged kernel."""
    img = Path(image).resolve()
    if img.parts[-4:] != ("arch", "x86", "boot", "bzImage"):
        return None
    cfg = img.parents[3] / ".config"
    return cfg.read_text() if cfg.exists() else None


def host_tsc_khz(cpuinfo: str = "/proc/cpuinfo") -> int:
    """The host's TSC rate in kHz (``cpu MHz``): TCG's guest TSC is the host's (QEMU's
    ``cpu_get_host_ticks``)."""
    with open(cpuinfo) as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]) * 1000)
    raise OracleError("boot", f"no 'cpu MHz' line in {cpuinfo} to give the guest its TSC rate")


def tsc_calibration_args(config: Optional[str], cpuinfo: str = "/proc/cpuinfo") -> str:
    """``tsc_early_khz=`` for a kernel without ACPI.  Under TCG the PIT calibration
    fails and, without ACPI, there is no HPET / PM timer to fall back on, so
    ``tsc_khz`` stays 0; KVM then never enters a guest: ``kvm_guest_time_update``
    sees ``get_cpu_tsc_khz() == 0``, re-raises KVM_REQ_CLOCK_UPDATE and returns 1, and
    ``vcpu_run`` loops on it for ever (x86.c, 6.12)."""
    if config is None or re.search(r"^CONFIG_ACPI=y$", config, re.M):
        return ""
    return f"tsc_early_khz={host_tsc_khz(cpuinfo)}"


def swprot_build_dir() -> Path:
    """Where the 6.12-swprot kernel is built: ``$TDPSIM_ORACLE_BUILD``, else
    ``~/.cache/tdpsim/oracle-build``."""
    env = os.environ.get("TDPSIM_ORACLE_BUILD")
    return Path(env) if env else Path.home() / ".cache" / "tdpsim" / "oracle-build"


def fragment_options(fragment: str) -> list[str]:
    """The ``CONFIG_X=...`` lines of a config fragment."""
    return [line.strip() for line in fragment.splitlines() if line.startswith("CONFIG_")]


def _swprot_tree(build_dir: Path) -> Path:
    return Path(build_dir) / "linux-source-6.12"


def swprot_kernel_built(build_dir: Path, fragment: Path = SWPROT_FRAGMENT) -> Optional[str]:
    """The bzImage of the 6.12-swprot build under *build_dir* if it is there and its
    ``.config`` has every option of the fragment, else None."""
    tree = _swprot_tree(build_dir)
    image, cfg = tree / "arch/x86/boot/bzImage", tree / ".config"
    if not image.exists() or not cfg.exists():
        return None
    have = set(cfg.read_text().splitlines())
    return str(image) if set(fragment_options(fragment.read_text())) <= have else None


def _build_step(cmd: Sequence[str], cwd: Path, log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise OracleError("build", f"`{' '.join(cmd)}` exited {r.returncode}", str(log))


def build_swprot_kernel(build_dir: Path, *, fragment: Path = SWPROT_FRAGMENT, jobs: int = 2,
                        source: str = SWPROT_SOURCE) -> str:
    """Build the 6.12-swprot kernel under *build_dir* (``linux-source-6.12/``, unpacked
    from Debian's source package): ``make tinyconfig``, the fragment merged on top,
    ``make olddefconfig``, ``nice make bzImage`` (incremental when the tree is there).
    Returns the bzImage; a missing tool or package is one line naming the apt packages."""
    missing = [t for t in ("make", "gcc", "bc", "bison", "flex") if shutil.which(t) is None]
    missing += [] if os.path.exists("/usr/include/gelf.h") else ["libelf (gelf.h)"]
    missing += [] if os.path.exists(source) else [source]
    if missing:
        raise OracleError("packages", f"building the {SWPROT} kernel needs {', '.join(missing)}: "
                          f"apt-get install {SWPROT_BUILD_PACKAGES}")
    if not fragment.exists():
        raise OracleError("packages", f"{fragment} is missing (the config fragment of {SWPROT})")
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    log = build_dir / f"build-{SWPROT}.log"
    tree = _swprot_tree(build_dir)
    if not (tree / "Makefile").exists():
        _build_step(["tar", "-xf", source, "-C", str(build_dir)], build_dir, log)
    # tinyconfig + fragment + olddefconfig gives the same .config every time, so an
    # existing tree only rebuilds what the fragment changed
    for cmd in (["make", "tinyconfig"],
                ["scripts/kconfig/merge_config.sh", "-m", ".config", str(fragment.resolve())],
                ["make", "olddefconfig"],
                ["nice", "-n", "19", "make", f"-j{jobs}", "bzImage"]):
        _build_step(cmd, tree, log)
    have = set((tree / ".config").read_text().splitlines())
    dropped = [o for o in fragment_options(fragment.read_text()) if o not in have]
    if dropped:
        raise OracleError("build", f"Kconfig dropped {', '.join(dropped)} (a dependency is "
                          f"missing from {fragment.name})", str(log))
    return str(tree / "arch/x86/boot/bzImage")


@dataclass
class OracleRun:
    """What one boot brought back."""

    kernel: GuestKernel
    out_dir: str
    console_log: str
    facts: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)    # one line each
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)


def read_rows(out_dir: str) -> list[dict]:
    """The rows the guest wrote (a truncated last line, from a crash, is dropped)."""
    rows = []
    try:
        with open(os.path.join(out_dir, "rows.jsonl")) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    except FileNotFoundError:
        pass
    return rows


def _last_step(log: str) -> str:
    steps = re.findall(r"oracle-step: (\S+)", log)
    return steps[-1] if steps else "boot"


def run_oracle(spec: str, out_dir: str, *, only: Sequence[str] = (), timeout: float = 1800,
               cpu: str = DEFAULT_CPU, append: str = "", image: Optional[str] = None,
               modules: Optional[str] = None, module_params: Optional[Mapping[str, str]] = None,
               nice: int = 19, selftests: Optional[Mapping[str, str]] = None) -> OracleRun:
    """Boot *spec*'s kernel under TCG, run the matrix inside, collect everything in
    *out_dir*.  Raises :class:`OracleError` only before the guest runs (packages,
    initramfs); boot failures, hangs and bad rows are :attr:`OracleRun.failures`."""
    if shutil.which(QEMU) is None:
        raise OracleError("packages", f"{QEMU} not found: apt-get install qemu-system-x86")
    if spec == SWPROT and image is None:
        image = swprot_kernel_built(swprot_build_dir())
        if image is None:
            raise OracleError("packages", f"the {SWPROT} kernel is not built in "
                              f"{swprot_build_dir()}: python benchmarks/oracle_record.py "
                              f"{SWPROT} builds it")
    kernel = find_kernel(spec, image=image, modules=modules)
    config = kernel_config(kernel.image)
    append = f"{append} {tsc_calibration_args(config)}".strip()
    os.makedirs(out_dir, exist_ok=True)
    for stale in ("rows.jsonl", "facts.json", "selftests.jsonl", "kernel.config"):
        if os.path.exists(os.path.join(out_dir, stale)):
            os.unlink(os.path.join(out_dir, stale))
    if config is not None:          # a kernel you built: keep what it was built from
        Path(out_dir, "kernel.config").write_text(config)
    import tdpsim  # noqa: PLC0415 - where this tdpsim lives is what the guest imports
    src = str(Path(tdpsim.__file__).resolve().parents[1])
    initrd = os.path.join(out_dir, "initramfs.cpio.gz")
    params = dict(DEFAULT_MODULE_PARAMS)
    params.update(module_params or {})
    guest_args = [f"--only {shlex.quote(n)}" for n in only] + [
        f"--selftest {shlex.quote(f'{n}={c}')}" for n, c in (selftests or {}).items()]
    build_initramfs(kernel, initrd, python=os.path.realpath(sys.executable), pythonpath=src,
                    guest_args=guest_args, module_params=params)
    cmd = qemu_command(kernel, initrd, os.path.abspath(out_dir), cpu=cpu, append=append)
    if nice:
        cmd = ["nice", "-n", str(nice)] + cmd
    log_path = os.path.join(out_dir, "console.log")
    run = OracleRun(kernel, out_dir, log_path, command=cmd)
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            run.failures.append(f"oracle: step {_last_step(Path(log_path).read_text(errors='replace'))} "
                                f"hung: no power-off within {timeout:.0f} s (log: {log_path})")
    run.seconds = time.monotonic() - t0
    text = Path(log_path).read_text(errors="replace")
    for m in re.finditer(r"oracle-fail: (.*)", text):
        run.failures.append(f"oracle: step {_last_step(text[:m.start()])} failed: "
                            f"{m.group(1).strip()} (log: {log_path})")
    panic = re.search(r"Kernel panic - not syncing: ([^\n]*)", text)
    if panic and not run.failures:
        run.failures.append(f"oracle: step {_last_step(text[:panic.start()])} failed: kernel "
                            f"panic: {panic.group(1).strip()} (log: {log_path})")
    if proc.returncode not in (0, -9) and not run.failures:
        run.failures.append(f"oracle: step qemu failed: exit {proc.returncode} (log: {log_path})")
    if "oracle-done:" not in text and not run.failures:
        run.failures.append(f"oracle: step {_last_step(text)} failed: the guest stopped before "
                            f"the matrix finished (log: {log_path})")
    try:
        run.facts = json.loads(Path(out_dir, "facts.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    run.rows = read_rows(out_dir)
    for r in run.rows:
        if "error" in r:
            run.failures.append(f"oracle: row {r['name']} failed: {r['error']} "
                                f"(log: {os.path.join(out_dir, 'rows.jsonl')})")
    return run
