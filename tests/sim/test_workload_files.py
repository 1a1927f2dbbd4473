"""Workload files: built-ins validate, malformed files give ONE clear error naming the
file, the dotted key and what was expected."""

import pytest

from tdpsim.sim import (WorkloadError, builtin_names, builtin_workload, load_workload,
                        loads_workload)

REQUIRED_BUILTINS = {"td-boot", "conversion-churn", "live-migration", "nx-exec",
                     "plain-vm-boot"}

GOOD = """
name = "w"
[vm]
kind = "td"
memory_gib = 1
[[phases]]
kind = "accept"
mib = 8
"""


def test_builtins_exist_and_validate():
    assert REQUIRED_BUILTINS <= set(builtin_names())
    for name in builtin_names():
        wl = builtin_workload(name)
        assert wl.name == name and wl.description


@pytest.mark.parametrize("text,key,expected", [
    (GOOD.replace('kind = "td"', 'kind = "tdx"'), "vm.kind", 'one of "td", "vm"'),
    (GOOD.replace("mib = 8", "mib = 8.001"), "phases[0].mib", "a multiple of 4 KiB"),
    (GOOD.replace("mib = 8", 'mib = "lots"'), "phases[0].mib", "a number"),
    (GOOD.replace('kind = "accept"', 'kind = "acept"'), "phases[0].kind", "one of"),
    (GOOD + 'colour = "red"\n', "phases[0].colour", "no such key here"),
    (GOOD.replace("memory_gib = 1", "memory_gib = 1\nvcpus = 0"), "vm.vcpus",
     "an integer between 1 and 512"),
    (GOOD + '[[phases]]\nkind = "touch"\naccesses = 3\n', "phases[1].region",
     "this key (required"),
    (GOOD + '[[phases]]\nkind = "touch"\naccesses = 3\nregion = {at_mib = 1000, mib = 100}\n',
     "phases[1].region", "a range inside guest memory"),
    (GOOD + '[[phases]]\nkind = "dirty_log"\nenable = true\n', "phases[1].kind",
     "guest_memfd slots cannot log dirty pages"),
    (GOOD.replace('name = "w"', 'name = "w"\n[policy]\nmirror_promotion = "sometimes"'),
     "policy.mirror_promotion", "a valid value"),
    ("name = 'w'\n[vm\nkind='td'", "(syntax)", "valid TOML"),
    (GOOD + '[[phases]]\nkind = "convert"\nregion = {at_mib = 0, at_gfn = 1, pages = 1}\n',
     "phases[1].region.at_gfn", "only one of at_mib or at_gfn"),
    (GOOD + '[[phases]]\nkind = "convert"\nregion = {at_gfn = 1, pages = 1, kib = 4}\n',
     "phases[1].region.pages", "only one of mib, kib or pages"),
    (GOOD + '[[phases]]\nkind = "convert"\nregion = {at_gfn = -1, pages = 1}\n',
     "phases[1].region.at_gfn", "an integer >= 0"),
    (GOOD + '[[phases]]\nkind = "convert"\n', "phases[1]", "exactly one of region or ranges"),
    (GOOD + 'stage = "bios"\n', "phases[0].stage", 'one of "build", "firmware", "kernel"'),
])
def test_malformed_file_one_clear_error(tmp_path, text, key, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(WorkloadError) as ei:
        load_workload(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: {key}: expected ")
    assert expected in msg
    assert "\n" not in msg
    assert ei.value.key == key


def test_missing_file_is_a_workload_error(tmp_path):
    with pytest.raises(WorkloadError, match="readable TOML file"):
        load_workload(tmp_path / "nope.toml")


def test_defaults_are_normalised():
    wl = loads_workload(GOOD + '[[phases]]\nkind = "touch"\naccesses = 1\n'
                        'region = {at_mib = 0, mib = 1}\n')
    touch = wl.phases[1]
    assert touch["stride_kib"] == 4096          # bytes
    assert touch["vcpus"] == (0,)               # "all" with 1 vCPU


def test_with_vm_revalidates():
    wl = builtin_workload("td-boot").with_vm(memory_gib=8)
    assert wl.vm.memory_bytes == 8 << 30
    with pytest.raises(WorkloadError, match="inside guest memory"):
        builtin_workload("td-boot").with_vm(memory_gib=2)


def test_gfn_ranges_and_stage():
    wl = loads_workload(GOOD + 'stage = "firmware"\n[[phases]]\nkind = "convert"\n'
                        'ranges = [{at_gfn = 0x3d9d7, pages = 1}, {at_gfn = 0x800, pages = 6}]\n')
    assert wl.phases[0]["stage"] == "firmware" and wl.phases[1]["stage"] == "kernel"
    a, b = wl.phases[1]["ranges"]
    assert (a.start_gfn, a.npages, b.start_gfn, b.npages) == (0x3d9d7, 1, 0x800, 6)
    assert wl.phases[1]["region"] is None
