"""ioctl numbers and struct layouts against the values the kernel headers produce (x86-64)."""

import ctypes

import pytest

from tdpsim.kvmcheck import uapi as u

# Values as computed by the C preprocessor from include/uapi/linux/kvm.h (x86-64).
KNOWN_IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_GET_MSR_INDEX_LIST": 0xC004AE02,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_GET_DIRTY_LOG": 0x4010AE42,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_MSRS": 0x4008AE89,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_GET_CPUID2": 0xC008AE91,
    "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_CLEAR_DIRTY_LOG": 0xC018AEC0,
    "KVM_GET_STATS_FD": 0xAECE,
    # 6.8+ private memory, 6.11+ pre-fault (gcc on linux-source-6.12's headers_install)
    "KVM_SET_USER_MEMORY_REGION2": 0x40A0AE49,
    "KVM_SET_MEMORY_ATTRIBUTES": 0x4020AED2,
    "KVM_CREATE_GUEST_MEMFD": 0xC040AED4,
    "KVM_PRE_FAULT_MEMORY": 0xC040AED5,
    "PAGEMAP_SCAN": 0xC0606610,
}

KNOWN_SIZES = {
    "kvm_userspace_memory_region": 32,
    "kvm_regs": 144,
    "kvm_segment": 24,
    "kvm_dtable": 16,
    "kvm_sregs": 312,
    "kvm_msr_entry": 16,
    "kvm_msrs": 8,
    "kvm_cpuid_entry2": 40,
    "kvm_cpuid2": 8,
    "kvm_dirty_log": 16,
    "kvm_clear_dirty_log": 24,
    "kvm_enable_cap": 104,
    "kvm_stats_header": 24,
    "kvm_stats_desc": 16,
    "kvm_run": 2352,
    "page_region": 24,
    "pm_scan_arg": 96,
    "kvm_userspace_memory_region2": 160,
    "kvm_memory_attributes": 32,
    "kvm_create_guest_memfd": 64,
    "kvm_pre_fault_memory": 64,
}


@pytest.mark.parametrize("name,value", sorted(KNOWN_IOCTLS.items()))
def test_ioctl_numbers(name, value):
    assert getattr(u, name) == value, f"{name} = {getattr(u, name):#x}, kernel: {value:#x}"


@pytest.mark.parametrize("name,size", sorted(KNOWN_SIZES.items()))
def test_struct_sizes(name, size):
    assert ctypes.sizeof(getattr(u, name)) == size


def test_ioc_encoding():
    # _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr
    assert u._IO(0xAE, 0x80) == 0xAE80
    assert u._IOR(0xAE, 0x81, 144) == (2 << 30) | (144 << 16) | 0xAE81
    assert u._IOW(0xAE, 0x46, u.kvm_userspace_memory_region) == (1 << 30) | (32 << 16) | 0xAE46
    assert u._IOWR(0xAE, 0x05, 8) == (3 << 30) | (8 << 16) | 0xAE05
    with pytest.raises(ValueError):
        u._IOW(0xAE, 0x01, 1 << 14)


def test_kvm_run_offsets():
    r = u.kvm_run
    assert r.exit_reason.offset == 8
    assert r.cr8.offset == 16
    assert r.u.offset == 32          # the exit union
    assert r.kvm_valid_regs.offset == 288
    assert r.s.offset == 304
    assert u.kvm_run_io.data_offset.offset == 8
    assert u.kvm_run_mmio.len.offset == 16
    assert u.kvm_run_internal.data.offset == 8


def test_sregs_offsets():
    s = u.kvm_sregs
    assert s.gdt.offset == 192
    assert s.cr0.offset == 224
    assert s.efer.offset == 264
    assert s.interrupt_bitmap.offset == 280


def test_flexible_arrays():
    m = u.make_kvm_msrs(3)
    assert ctypes.sizeof(m) == 8 + 3 * 16
    c = u.make_kvm_cpuid2(5)
    assert c.nent == 5 and ctypes.sizeof(c) == 8 + 5 * 40


def test_ioctl_names_for_errors():
    assert u.IOCTL_NAMES[u.KVM_SET_USER_MEMORY_REGION] == "KVM_SET_USER_MEMORY_REGION"
    assert u.IOCTL_NAMES[u.PAGEMAP_SCAN] == "PAGEMAP_SCAN"
    assert u.KVM_EXIT_NAMES[u.KVM_EXIT_HLT] == "KVM_EXIT_HLT"
