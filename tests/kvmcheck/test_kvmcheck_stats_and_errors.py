"""Binary-stats parser on a synthetic buffer; error reporting without needing KVM."""

import ctypes
import errno
import os
import struct

import pytest

from tdpsim.kvmcheck import uapi as u
from tdpsim.kvmcheck.vm import (KvmError, KvmSystem, KvmUnavailable, StatsFd, _ioctl,
                                parse_stats_buffer)

NAME_SIZE = 48


def _synthetic_stats(values):
    """Lay out a stats file the way virt/kvm/binary_stats.c does:
    header | id (name_size) | descriptors (16 + name_size each) | data."""
    id_off = ctypes.sizeof(u.kvm_stats_header)
    desc_off = id_off + NAME_SIZE
    desc_sz = ctypes.sizeof(u.kvm_stats_desc) + NAME_SIZE
    data_off = desc_off + desc_sz * len(values)
    hdr = u.kvm_stats_header(flags=0, name_size=NAME_SIZE, num_desc=len(values),
                             id_offset=id_off, desc_offset=desc_off, data_offset=data_off)
    buf = bytearray(bytes(hdr))
    buf += b"kvm-1234".ljust(NAME_SIZE, b"\0")
    data = bytearray()
    for name, (flags, vals) in values.items():
        d = u.kvm_stats_desc(flags=flags, exponent=0, size=len(vals), offset=len(data),
                             bucket_size=0)
        buf += bytes(d) + name.encode().ljust(NAME_SIZE, b"\0")
        data += struct.pack(f"<{len(vals)}Q", *vals)
    return bytes(buf + data)


VALUES = {
    "remote_tlb_flush": (u.KVM_STATS_TYPE_CUMULATIVE, [7]),
    "pages_4k": (u.KVM_STATS_TYPE_INSTANT, [4096]),
    "pages_2m": (u.KVM_STATS_TYPE_INSTANT, [8]),
    "pages_1g": (u.KVM_STATS_TYPE_INSTANT, [0]),
    "halt_poll_success_hist": (u.KVM_STATS_TYPE_LOG_HIST, [1, 2, 3, 4]),
    "max_mmu_page_hash_collisions": (u.KVM_STATS_TYPE_PEAK, [2 ** 63 + 5]),
}


def test_parse_synthetic_buffer():
    got = parse_stats_buffer(_synthetic_stats(VALUES))
    assert got == {
        "remote_tlb_flush": 7, "pages_4k": 4096, "pages_2m": 8, "pages_1g": 0,
        "halt_poll_success_hist": (1, 2, 3, 4), "max_mmu_page_hash_collisions": 2 ** 63 + 5,
    }


def test_parse_truncated_buffer():
    buf = _synthetic_stats(VALUES)
    with pytest.raises(ValueError):
        parse_stats_buffer(buf[:-8])
    with pytest.raises(ValueError):
        parse_stats_buffer(buf[:10])


def test_statsfd_reads_descriptors_once_and_data_each_time(tmp_path):
    p = tmp_path / "stats"
    p.write_bytes(_synthetic_stats(VALUES))
    fd = os.open(p, os.O_RDWR)
    s = StatsFd(fd)
    try:
        assert s.id == "kvm-1234"
        assert [d.name for d in s.descriptors] == list(VALUES)
        assert s.descriptors[0].cumulative and not s.descriptors[1].cumulative
        assert s.read()["pages_2m"] == 8
        # rewrite pages_2m's value in place; the next read sees it
        off = s.header.data_offset + s.descriptors[2].offset
        os.pwrite(fd, struct.pack("<Q", 9), off)
        assert s.read()["pages_2m"] == 9
    finally:
        s.close()


def test_missing_device_is_kvm_unavailable(tmp_path):
    missing = tmp_path / "no-such-kvm"
    with pytest.raises(KvmUnavailable) as ei:
        KvmSystem(str(missing))
    msg = str(ei.value)
    assert str(missing) in msg and "does not exist" in msg
    assert msg.count(".") >= 1 and "\n" not in msg


def test_not_a_kvm_device_is_kvm_unavailable():
    with pytest.raises(KvmUnavailable, match="not a KVM device"):
        KvmSystem("/dev/null")


def test_ioctl_error_names_ioctl_and_errno():
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        r = u.kvm_userspace_memory_region()
        with pytest.raises(KvmError) as ei:
            _ioctl(fd, u.KVM_SET_USER_MEMORY_REGION, r)
    finally:
        os.close(fd)
    assert ei.value.op == "KVM_SET_USER_MEMORY_REGION"
    assert ei.value.errno == errno.ENOTTY
    assert str(ei.value) == f"KVM_SET_USER_MEMORY_REGION failed: ENOTTY ({errno.ENOTTY})"
