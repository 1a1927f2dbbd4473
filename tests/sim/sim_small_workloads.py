"""Small workloads shared by the sim/report/CLI tests."""

SMALL_TD = """
name = "small-td"
description = "tiny TD: build, 4K firmware accepts, lazy 2M accepts, conversions, touches"
[vm]
kind = "td"
vcpus = 2
memory_gib = 0.0625
host_page = "4K"

[[phases]]
name = "build"
kind = "td_build"
sections = [{ at_mib = 60, kib = 64 }]

[[phases]]
name = "firmware"
kind = "accept"
level = "4K"
vcpus = [0]
ranges = [{ at_mib = 56, kib = 256 }, { at_mib = 60.0625, kib = 64 }]

[[phases]]
name = "stub"
kind = "accept"
complete_partial = true
vcpus = [0]

[[phases]]
name = "kernel"
kind = "accept"
mib = 16
order = "descending"

[[phases]]
name = "churn"
kind = "convert"
region = { at_mib = 40, mib = 4 }
unit_kib = 4
times = 6
pattern = "random"

[[phases]]
name = "touch"
kind = "touch"
region = { at_mib = 36, mib = 8 }
accesses = 40
pattern = "random"
"""

SMALL_VM = """
name = "small-vm"
[vm]
kind = "vm"
vcpus = 2
memory_gib = 0.0625
[policy]
nx_huge_pages = true

[[phases]]
kind = "accept"
mib = 16

[[phases]]
name = "exec"
kind = "touch"
region = { at_mib = 0, mib = 16 }
accesses = 50
pattern = "random"
exec_fraction = 0.5

[[phases]]
kind = "nx_recovery"
ratio = 1

[[phases]]
name = "log-on"
kind = "dirty_log"
enable = true

[[phases]]
name = "writes"
kind = "touch"
region = { at_mib = 0, mib = 16 }
accesses = 30
write_fraction = 1.0

[[phases]]
name = "log-off"
kind = "dirty_log"
enable = false
"""
