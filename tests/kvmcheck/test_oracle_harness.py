"""The QEMU oracle harness without QEMU: kernel lookup, module closure, initramfs, command
line, failure lines, the guest runner's trace cutting and the SPTE canonical form."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess

import pytest

from tdpsim.kvmcheck import qemu as q
from tdpsim.kvmcheck.oracle import NPT_BITS, canonical, event_text, model_bits, split_trace
from tdpsim.kvmcheck.oracle_guest import PHASE_MARK
from tdpsim.kvmcheck.vm import smaps_huge_bytes
from tdpsim.trace.parser import parse_line


def _fake_tree(tmp_path, rel="6.1.0-50-amd64", xz=False):
    boot = tmp_path / "boot"
    mods = tmp_path / "lib" / "modules" / rel
    (mods / "kernel").mkdir(parents=True)
    boot.mkdir(exist_ok=True)
    (boot / f"vmlinuz-{rel}").write_bytes(b"bzImage")
    ext = ".ko.xz" if xz else ".ko"
    deps = {
        "kvm-amd": ["ccp", "kvm", "irqbypass"], "kvm": ["irqbypass"], "irqbypass": [],
        "ccp": [], "9p": ["9pnet", "netfs"], "9pnet": [], "netfs": [],
        "9pnet_virtio": ["9pnet", "virtio_ring", "virtio"], "virtio_ring": [], "virtio": [],
        "virtio_pci": ["virtio_ring", "virtio"],
    }
    lines = []
    for m, ds in deps.items():
        path = f"kernel/{m}{ext}"
        data = f"ELF {m}".encode()
        (mods / path).write_bytes(lzma.compress(data) if xz else data)
        lines.append(f"{path}: " + " ".join(f"kernel/{d}{ext}" for d in ds))
    (mods / "modules.dep").write_text("\n".join(lines) + "\n")
    (mods / "modules.builtin").write_text("")
    return boot, mods


def test_find_kernel_picks_the_newest_generic_image(tmp_path):
    boot, _ = _fake_tree(tmp_path, "6.1.0-47-amd64")
    _fake_tree(tmp_path, "6.1.0-50-amd64")
    _fake_tree(tmp_path, "6.1.0-50-cloud-amd64")
    _fake_tree(tmp_path, "6.12.117+deb12-amd64")
    k = q.find_kernel("6.1", boot=str(boot), lib_modules=str(tmp_path / "lib" / "modules"))
    assert k.release == "6.1.0-50-amd64"
    k = q.find_kernel("6.12", boot=str(boot), lib_modules=str(tmp_path / "lib" / "modules"))
    assert k.release == "6.12.117+deb12-amd64"


def test_a_missing_kernel_names_the_apt_package(tmp_path):
    (tmp_path / "boot").mkdir()
    with pytest.raises(q.OracleError) as e:
        q.find_kernel("6.12", boot=str(tmp_path / "boot"))
    assert str(e.value).startswith("oracle: step packages failed: no 6.12 kernel in ")
    assert "apt-get install linux-image-6.12.<N>+deb12-amd64-unsigned" in str(e.value)


def test_module_closure_loads_dependencies_first(tmp_path):
    _, mods = _fake_tree(tmp_path)
    order = [os.path.basename(p) for p in q.module_closure(str(mods))]
    assert order == ["virtio.ko", "virtio_ring.ko", "virtio_pci.ko", "9pnet.ko",
                     "9pnet_virtio.ko", "netfs.ko", "9p.ko", "irqbypass.ko", "kvm.ko",
                     "ccp.ko", "kvm-amd.ko"]


def test_an_unknown_module_is_one_line(tmp_path):
    _, mods = _fake_tree(tmp_path)
    with pytest.raises(q.OracleError, match=r"step initramfs failed: module kvm_intel is "):
        q.module_closure(str(mods), ["kvm_intel"])


def _cpio_members(data: bytes) -> dict[str, tuple[int, bytes]]:
    """A minimal newc reader (the test's own, independent of the writer)."""
    out, i = {}, 0
    while True:
        assert data[i:i + 6] == b"070701"
        f = [int(data[i + 6 + 8 * k: i + 14 + 8 * k], 16) for k in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[i + 110: i + 110 + namesize - 1].decode()
        i += 110 + namesize
        i += -i % 4
        body = data[i:i + size]
        i += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_initramfs_holds_busybox_console_decompressed_modules_and_init(tmp_path):
    _, mods = _fake_tree(tmp_path, xz=True)
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF busybox")
    k = q.GuestKernel("6.12.117+deb12-amd64", "vmlinuz", str(mods))
    dest = tmp_path / "initrd.gz"
    lines = q.build_initramfs(k, str(dest), python="/usr/bin/python3", pythonpath="/src",
                              guest_args=["--only aligned"], busybox=str(bb))
    assert lines[-1] == "kvm-amd.ko npt=1" and "kvm.ko tdp_mmu=1" in lines
    m = _cpio_members(gzip.decompress(dest.read_bytes()))
    assert m["dev/console"][0] == 0o020600
    assert m["bin/busybox"] == (0o100755, b"\x7fELF busybox")
    assert m["modules/kvm-amd.ko"][1] == b"ELF kvm-amd"          # .ko.xz decompressed
    init = m["init"][1].decode()
    assert "insmod /modules/kvm-amd.ko npt=1 || fail" in init
    assert "PYTHONPATH=/src" in init and "oracle_guest --out /mnt --only aligned" in init
    assert init.count("multidevs") == 0 and "mount -t tracefs" in init


def test_missing_busybox_names_its_package(tmp_path):
    _, mods = _fake_tree(tmp_path)
    k = q.GuestKernel("r", "img", str(mods))
    with pytest.raises(q.OracleError, match="apt-get install busybox-static"):
        q.build_initramfs(k, str(tmp_path / "i"), python="p", pythonpath="s",
                          busybox=str(tmp_path / "none"))


def test_qemu_command_is_tcg_with_both_9p_shares_remapped():
    k = q.GuestKernel("r", "/boot/vmlinuz-r", "/lib/modules/r")
    cmd = q.qemu_command(k, "/tmp/i.gz", "/tmp/out")
    assert cmd[:5] == ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max,-la57"]
    shares = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-virtfs"]
    assert len(shares) == 2 and all("multidevs=remap" in s for s in shares)
    assert "readonly=on" in shares[0] and "path=/tmp/out" in shares[1]


def test_run_oracle_without_qemu_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(q.shutil, "which", lambda name: None)
    with pytest.raises(q.OracleError) as e:
        q.run_oracle("6.1", str(tmp_path))
    assert str(e.value) == ("oracle: step packages failed: qemu-system-x86_64 not found: "
                            "apt-get install qemu-system-x86")


def test_a_hung_guest_keeps_the_rows_it_wrote(monkeypatch, tmp_path):
    """A guest that prints a step, writes one row and never powers off."""
    _, mods = _fake_tree(tmp_path)
    (tmp_path / "boot" / "vmlinuz-6.1.0-50-amd64").write_bytes(b"x")
    out = tmp_path / "out"
    monkeypatch.setattr(q.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(q, "find_kernel", lambda spec, **kw: q.GuestKernel(
        "6.1.0-50-amd64", "img", str(mods)))
    monkeypatch.setattr(q, "build_initramfs", lambda *a, **kw: [])
    row = json.dumps({"name": "aligned", "skipped": None})
    script = (f"echo 'oracle-step: run'; printf '%s\\n' '{row}' > {out}/rows.jsonl; "
              f"echo 'oracle-row: aligned done'; sleep 30")
    monkeypatch.setattr(q, "qemu_command", lambda *a, **kw: ["sh", "-c", script])
    run = q.run_oracle("6.1", str(out), timeout=2, nice=0)
    assert [r["name"] for r in run.rows] == ["aligned"]
    assert run.failures == [f"oracle: step run hung: no power-off within 2 s "
                            f"(log: {out}/console.log)"]


def test_split_trace_cuts_at_the_phase_markers():
    lines = ["a", f" python-1 [000] ..... 1.0: tracing_mark_write: {PHASE_MARK}warmup",
             "b", "c", f" python-1 [000] ..... 2.0: tracing_mark_write: {PHASE_MARK}touch", "d"]
    segs, rest = split_trace(lines)
    assert segs == {"warmup": ["a"], "touch": ["b", "c"]} and rest == ["d"]


def test_split_trace_reads_markers_of_a_kernel_without_kallsyms():
    """The tinyconfig build prints the print event's caller as an address."""
    lines = ["a", f" python3.11-37 [000] ..... 9.52: 0xffffffff810e76dc: {PHASE_MARK}warmup", "b",
             f" python3.11-37 [000] ..... 9.53: some_event: {PHASE_MARK}touch"]
    segs, rest = split_trace(lines)
    assert segs == {"warmup": ["a"]} and rest == ["b", lines[3]]


def test_npt_sptes_from_a_real_6_1_capture_decode():
    leaf = parse_line("      python3.11-105     [000] ...1.    21.177890: kvm_tdp_mmu_spte_changed: "
                      "as id 0 gfn 3 level 1 old_spte 0 new_spte 8c5ae67")
    table = parse_line("      python3.11-105     [000] ...1.    21.177371: kvm_tdp_mmu_spte_changed: "
                       "as id 0 gfn 0 level 4 old_spte 0 new_spte c855827")
    huge = parse_line("      python3.11-105     [000] ...1.    21.185709: kvm_tdp_mmu_spte_changed: "
                      "as id 0 gfn 40000 level 2 old_spte 8000000000000000 new_spte 8000ee7")
    assert canonical(leaf, NPT_BITS) == ("kvm_tdp_mmu_spte_changed", 3, 1, "-", "LWXADhm")
    assert canonical(table, NPT_BITS) == ("kvm_tdp_mmu_spte_changed", 0, 4, "-", "WXA")
    assert event_text(canonical(huge, NPT_BITS)) == "kvm_tdp_mmu_spte_changed 0x40000 0x2 - LWXADhm"
    assert NPT_BITS.decode(0x5A0, 1) == NPT_BITS.decode((1 << 63) | 0x5A0, 2) == ("frozen",)
    assert NPT_BITS.decode(0x8C5AE67 | (1 << 63), 1) == ("LWADhm",)       # NX


def test_model_npt_sptes_decode_like_the_kernel_ones():
    from tdpsim.model.profile import KERNEL_6_1, KERNEL_6_12
    from tdpsim.model.spte import kvm_mmu_reset_all_pte_masks
    bits = model_bits(kvm_mmu_reset_all_pte_masks())
    assert bits == NPT_BITS
    assert bits.decode(KERNEL_6_1.FROZEN_SPTE, 1) == bits.decode(KERNEL_6_12.FROZEN_SPTE, 1) \
        == ("frozen",)


def test_smaps_huge_bytes_sums_the_overlapping_vmas(tmp_path):
    smaps = tmp_path / "smaps"
    smaps.write_text(
        "7f0000000000-7f0000400000 rw-p 00000000 00:00 0\n"
        "AnonHugePages:      2048 kB\nPrivate_Hugetlb:        0 kB\n"
        "7f0000400000-7f0000800000 rw-p 00000000 00:00 0\n"
        "AnonHugePages:      4096 kB\n")
    assert smaps_huge_bytes(0x7F0000000000, 0x7F0000400000, str(smaps)) == 2 << 20
    assert smaps_huge_bytes(0x7F0000000000, 0x7F0000800000, str(smaps)) == 6 << 20


def test_cpio_is_readable_by_gnu_cpio(tmp_path):
    if subprocess.run(["sh", "-c", "command -v cpio"], capture_output=True).returncode:
        pytest.skip("cpio is not installed")
    c = q._Cpio()
    c.dir("bin")
    c.file("bin/x", b"hello", 0o755)
    c.symlink("bin/sh", "x")
    r = subprocess.run(["cpio", "-t"], input=c.finish(), capture_output=True)
    assert r.returncode == 0 and r.stdout.decode().split() == ["bin", "bin/x", "bin/sh"]


def test_a_kernel_with_everything_built_in_needs_no_modules(tmp_path):
    img = tmp_path / "bzImage"
    img.write_bytes(b"bz")
    k = q.find_kernel("6.12", image=str(img))
    assert k == q.GuestKernel("bzImage", str(img), "")
    bb = tmp_path / "busybox"
    bb.write_bytes(b"bb")
    assert q.build_initramfs(k, str(tmp_path / "i.gz"), python="p", pythonpath="s",
                             busybox=str(bb)) == []
    with pytest.raises(q.OracleError, match="--modules needs --kernel-image"):
        q.find_kernel("6.12", modules=str(tmp_path))


def test_a_kernel_panic_is_one_line_naming_it(monkeypatch, tmp_path):
    _, mods = _fake_tree(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setattr(q.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(q, "find_kernel", lambda spec, **kw: q.GuestKernel("r", "img", str(mods)))
    monkeypatch.setattr(q, "build_initramfs", lambda *a, **kw: [])
    log = tmp_path / "serial"
    log.write_text("[ 0.05] Kernel panic - not syncing: IO-APIC + timer doesn't work!  "
                   "Boot with apic=debug\n")
    monkeypatch.setattr(q, "qemu_command", lambda *a, **kw: ["cat", str(log)])
    run = q.run_oracle("6.1", str(out), timeout=20, nice=0)
    assert run.rows == [] and run.failures == [
        f"oracle: step boot failed: kernel panic: IO-APIC + timer doesn't work!  Boot with "
        f"apic=debug (log: {out}/console.log)"]


def test_a_kernel_without_acpi_is_given_its_tsc_rate(tmp_path):
    """tinyconfig has no ACPI: no HPET / PM timer to calibrate the TSC against under TCG,
    tsc_khz stays 0 and kvm_guest_time_update makes KVM_RUN loop for ever."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2596.140\nflags\t: fpu\n")
    tree = tmp_path / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    (tree / "arch/x86/boot/bzImage").write_bytes(b"bzImage")
    (tree / ".config").write_text("CONFIG_64BIT=y\n# CONFIG_ACPI is not set\n")
    cfg = q.kernel_config(str(tree / "arch/x86/boot/bzImage"))
    assert q.tsc_calibration_args(cfg, str(cpuinfo)) == "tsc_early_khz=2596140"
    (tree / ".config").write_text("CONFIG_64BIT=y\nCONFIG_ACPI=y\n")
    assert q.tsc_calibration_args(q.kernel_config(str(tree / "arch/x86/boot/bzImage")),
                                  str(cpuinfo)) == ""
    # a packaged kernel (/boot/vmlinuz-*) has no tree: it calibrates against HPET itself
    assert q.kernel_config(str(tree / "arch/x86/boot/../boot/bzImage")) is not None
    (tmp_path / "vmlinuz-6.12").write_bytes(b"bzImage")
    assert q.kernel_config(str(tmp_path / "vmlinuz-6.12")) is None
    assert q.tsc_calibration_args(None, str(cpuinfo)) == ""


def test_no_cpu_mhz_is_one_line(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n")
    with pytest.raises(q.OracleError, match=r"^oracle: step boot failed: no 'cpu MHz' line in "):
        q.host_tsc_khz(str(tmp_path / "cpuinfo"))


def _fake_swprot_tree(build_dir, options):
    tree = build_dir / "linux-source-6.12"
    (tree / "arch/x86/boot").mkdir(parents=True)
    (tree / "arch/x86/boot/bzImage").write_bytes(b"bzImage")
    (tree / ".config").write_text("\n".join(options) + "\n")
    return tree


def test_the_swprot_kernel_is_built_when_its_config_has_the_whole_fragment(tmp_path):
    frag = tmp_path / "frag.config"
    frag.write_text("# comment\nCONFIG_KVM=y\nCONFIG_KVM_SW_PROTECTED_VM=y\n")
    assert q.fragment_options(frag.read_text()) == ["CONFIG_KVM=y", "CONFIG_KVM_SW_PROTECTED_VM=y"]
    assert q.swprot_kernel_built(tmp_path, frag) is None
    tree = _fake_swprot_tree(tmp_path, ["CONFIG_KVM=y", "CONFIG_X=y"])
    assert q.swprot_kernel_built(tmp_path, frag) is None       # the fragment changed
    (tree / ".config").write_text("CONFIG_KVM=y\nCONFIG_KVM_SW_PROTECTED_VM=y\nCONFIG_X=y\n")
    assert q.swprot_kernel_built(tmp_path, frag) == str(tree / "arch/x86/boot/bzImage")
    # the repository's fragment asks for the VM type the private rows need
    assert "CONFIG_KVM_SW_PROTECTED_VM=y" in q.fragment_options(q.SWPROT_FRAGMENT.read_text())


def test_building_the_swprot_kernel_without_its_packages_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(q.shutil, "which", lambda name: None if name == "bison" else "/usr/bin/x")
    real_exists = os.path.exists
    monkeypatch.setattr(q.os.path, "exists", lambda p: p != "/usr/include/gelf.h" and real_exists(p))
    with pytest.raises(q.OracleError) as e:
        q.build_swprot_kernel(tmp_path, source=str(tmp_path / "none.tar.xz"))
    assert str(e.value) == (
        f"oracle: step packages failed: building the 6.12-swprot kernel needs bison, "
        f"libelf (gelf.h), {tmp_path / 'none.tar.xz'}: apt-get install linux-source-6.12 "
        f"build-essential bc bison flex libelf-dev")


def test_a_failing_build_step_names_the_command_and_the_log(monkeypatch, tmp_path):
    monkeypatch.setattr(q.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(q.os.path, "exists", lambda p: True)
    tree = _fake_swprot_tree(tmp_path, [])
    (tree / "Makefile").write_text("tinyconfig:\n\tfalse\n")
    with pytest.raises(q.OracleError) as e:
        q.build_swprot_kernel(tmp_path)
    assert str(e.value) == (f"oracle: step build failed: `make tinyconfig` exited 2 "
                            f"(log: {tmp_path / 'build-6.12-swprot.log'})")
    assert "$ make tinyconfig" in (tmp_path / "build-6.12-swprot.log").read_text()


def test_an_unbuilt_swprot_kernel_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setattr(q.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setenv("TDPSIM_ORACLE_BUILD", str(tmp_path))
    with pytest.raises(q.OracleError) as e:
        q.run_oracle(q.SWPROT, str(tmp_path / "out"))
    assert str(e.value) == (f"oracle: step packages failed: the 6.12-swprot kernel is not "
                            f"built in {tmp_path}: python benchmarks/oracle_record.py "
                            f"6.12-swprot builds it")


def test_write_fixture_keeps_a_built_kernels_config(tmp_path):
    from tdpsim.kvmcheck.oracle import write_fixture
    src, dest = tmp_path / "run", tmp_path / "fixture"
    (src / "traces").mkdir(parents=True)
    (src / "facts.json").write_text("{}\n")
    (src / "rows.jsonl").write_text(json.dumps({"name": "aligned", "trace": "traces/aligned.trace",
                                                "traceback": "x"}) + "\n")
    (src / "traces" / "aligned.trace").write_text("t\n")
    (src / "kernel.config").write_text("CONFIG_KVM_SW_PROTECTED_VM=y\n")
    written = write_fixture(src, dest)
    assert sorted(os.path.relpath(w, dest) for w in written) == [
        "facts.json", "kernel.config.xz", "rows.jsonl", "traces/aligned.trace.xz"]
    assert lzma.decompress((dest / "kernel.config.xz").read_bytes()) == b"CONFIG_KVM_SW_PROTECTED_VM=y\n"
    assert "traceback" not in (dest / "rows.jsonl").read_text()
