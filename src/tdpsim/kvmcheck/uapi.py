"""ctypes mirror of the parts of the KVM (and pagemap) userspace ABI that kvmcheck uses.

Names follow ``include/uapi/linux/kvm.h``, ``arch/x86/include/uapi/asm/kvm.h``,
``include/uapi/asm-generic/ioctl.h`` and ``include/uapi/linux/fs.h`` exactly, so a
reader can grep the kernel for any of them.  Only x86-64 is supported.

Dependency-free on purpose: this module imports ctypes only.
"""

from __future__ import annotations

import ctypes

__all__ = [
    # ioctl encoding
    "_IOC", "_IO", "_IOR", "_IOW", "_IOWR",
    "_IOC_NONE", "_IOC_WRITE", "_IOC_READ",
    # structs
    "kvm_userspace_memory_region", "kvm_regs", "kvm_segment", "kvm_dtable", "kvm_sregs",
    "kvm_msr_entry", "kvm_msrs", "kvm_msr_list", "kvm_cpuid_entry2", "kvm_cpuid2",
    "kvm_dirty_log", "kvm_clear_dirty_log", "kvm_enable_cap", "kvm_stats_header",
    "kvm_stats_desc", "kvm_run", "kvm_run_io", "kvm_run_mmio", "kvm_run_internal",
    "kvm_run_fail_entry", "kvm_run_hw", "kvm_run_exit_union", "page_region", "pm_scan_arg",
    "make_kvm_msrs", "make_kvm_cpuid2", "kvm_userspace_memory_region2",
    "kvm_memory_attributes", "kvm_create_guest_memfd", "kvm_pre_fault_memory",
    "IOCTL_NAMES",
]

# --------------------------------------------------------------------------------------
# include/uapi/asm-generic/ioctl.h
# --------------------------------------------------------------------------------------
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(dir_: int, type_: int, nr: int, size: int) -> int:
    """Encode an ioctl request number exactly like the kernel's _IOC() macro."""
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return ((dir_ << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT)
            | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


def _sizeof(t) -> int:
    return t if isinstance(t, int) else ctypes.sizeof(t)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_READ, type_, nr, _sizeof(t))


def _IOW(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _sizeof(t))


def _IOWR(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _sizeof(t))


u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
s16 = ctypes.c_int16

# --------------------------------------------------------------------------------------
# include/uapi/linux/kvm.h: constants
# --------------------------------------------------------------------------------------
KVM_API_VERSION = 12
KVMIO = 0xAE

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2
#: KVM_CREATE_VM types (arch/x86/include/uapi/asm/kvm.h)
KVM_X86_DEFAULT_VM = 0
KVM_X86_SW_PROTECTED_VM = 1
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

KVM_EXIT_NAMES = {
    v: k for k, v in dict(globals()).items() if k.startswith("KVM_EXIT_") and isinstance(v, int)
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3

# Capabilities used here (KVM_CHECK_EXTENSION / KVM_ENABLE_CAP).
KVM_CAP_USER_MEMORY = 3
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_EXT_CPUID = 7
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_BINARY_STATS_FD = 203
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_PRE_FAULT_MEMORY = 236

KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1

# Binary stats (KVM_GET_STATS_FD) flag fields.
KVM_STATS_TYPE_SHIFT = 0
KVM_STATS_TYPE_MASK = 0xF << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_CUMULATIVE = 0x0 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_INSTANT = 0x1 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_PEAK = 0x2 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_LINEAR_HIST = 0x3 << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_LOG_HIST = 0x4 << KVM_STATS_TYPE_SHIFT

KVM_STATS_UNIT_SHIFT = 4
KVM_STATS_UNIT_MASK = 0xF << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_NONE = 0x0 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_BYTES = 0x1 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_SECONDS = 0x2 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_CYCLES = 0x3 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_BOOLEAN = 0x4 << KVM_STATS_UNIT_SHIFT

KVM_STATS_BASE_SHIFT = 8
KVM_STATS_BASE_MASK = 0xF << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_POW10 = 0x0 << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_POW2 = 0x1 << KVM_STATS_BASE_SHIFT


# --------------------------------------------------------------------------------------
# include/uapi/linux/kvm.h: structures
# --------------------------------------------------------------------------------------
class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),      # bytes
        ("userspace_addr", u64),   # start of the userspace allocated memory
    ]


class kvm_userspace_memory_region2(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
        ("guest_memfd_offset", u64),
        ("guest_memfd", u32),
        ("pad1", u32),
        ("pad2", u64 * 14),
    ]


class kvm_memory_attributes(ctypes.Structure):
    _fields_ = [
        ("address", u64),
        ("size", u64),
        ("attributes", u64),
        ("flags", u64),
    ]


class kvm_create_guest_memfd(ctypes.Structure):
    _fields_ = [
        ("size", u64),
        ("flags", u64),
        ("reserved", u64 * 6),
    ]


class kvm_pre_fault_memory(ctypes.Structure):
    _fields_ = [
        ("gpa", u64),
        ("size", u64),
        ("flags", u64),
        ("padding", u64 * 5),
    ]


class kvm_dirty_log(ctypes.Structure):
    # union { void __user *dirty_bitmap; __u64 padding2; } flattened to the u64.
    _fields_ = [
        ("slot", u32),
        ("padding1", u32),
        ("dirty_bitmap", u64),
    ]


class kvm_clear_dirty_log(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("num_pages", u32),
        ("first_page", u64),
        ("dirty_bitmap", u64),     # union with __u64 padding2
    ]


class kvm_enable_cap(ctypes.Structure):
    _fields_ = [
        ("cap", u32),
        ("flags", u32),
        ("args", u64 * 4),
        ("pad", u8 * 64),
    ]


class kvm_msr_list(ctypes.Structure):
    _fields_ = [("nmsrs", u32)]    # followed by __u32 indices[]


class kvm_stats_header(ctypes.Structure):
    _fields_ = [
        ("flags", u32),
        ("name_size", u32),
        ("num_desc", u32),
        ("id_offset", u32),
        ("desc_offset", u32),
        ("data_offset", u32),
    ]


class kvm_stats_desc(ctypes.Structure):
    # followed by char name[header.name_size]
    _fields_ = [
        ("flags", u32),
        ("exponent", s16),
        ("size", u16),
        ("offset", u32),
        ("bucket_size", u32),
    ]


# --- kvm_run ---------------------------------------------------------------------------
class kvm_run_hw(ctypes.Structure):
    _fields_ = [("hardware_exit_reason", u64)]


class kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_ex(ctypes.Structure):
    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_run_io(ctypes.Structure):
    _fields_ = [
        ("direction", u8),
        ("size", u8),              # bytes
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),      # relative to kvm_run start
    ]


class kvm_run_mmio(ctypes.Structure):
    _fields_ = [
        ("phys_addr", u64),
        ("data", u8 * 8),
        ("len", u32),
        ("is_write", u8),
    ]


class kvm_run_internal(ctypes.Structure):
    _fields_ = [
        ("suberror", u32),
        ("ndata", u32),
        ("data", u64 * 16),
    ]


class kvm_run_system_event(ctypes.Structure):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_exit_union(ctypes.Union):
    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("ex", kvm_run_ex),
        ("io", kvm_run_io),
        ("mmio", kvm_run_mmio),
        ("internal", kvm_run_internal),
        ("system_event", kvm_run_system_event),
        ("padding", ctypes.c_char * 256),   # "Fix the size of the union."
    ]


class kvm_run(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [
        # in
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        # out
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        # in (pre_kvm_run), out (post_kvm_run)
        ("cr8", u64),
        ("apic_base", u64),
        ("u", kvm_run_exit_union),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("s", ctypes.c_char * 2048),        # union { struct kvm_sync_regs regs; char padding[2048]; }
    ]


# --------------------------------------------------------------------------------------
# arch/x86/include/uapi/asm/kvm.h
# --------------------------------------------------------------------------------------
KVM_NR_INTERRUPTS = 256


class kvm_regs(ctypes.Structure):
    _fields_ = [(n, u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
        "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(ctypes.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u16),
        ("padding", u16 * 3),
    ]


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
        ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
        ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [
        ("index", u32),
        ("reserved", u32),
        ("data", u64),
    ]


class kvm_msrs(ctypes.Structure):
    # followed by struct kvm_msr_entry entries[nmsrs]
    _fields_ = [
        ("nmsrs", u32),
        ("pad", u32),
    ]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):
    # followed by struct kvm_cpuid_entry2 entries[nent]
    _fields_ = [
        ("nent", u32),
        ("padding", u32),
    ]


def make_kvm_msrs(n: int):
    """A kvm_msrs with room for *n* trailing kvm_msr_entry records (flexible array)."""
    class _kvm_msrs_n(ctypes.Structure):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * n)]
    return _kvm_msrs_n()


def make_kvm_cpuid2(n: int):
    """A kvm_cpuid2 with room for *n* trailing kvm_cpuid_entry2 records."""
    class _kvm_cpuid2_n(ctypes.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * n)]
    obj = _kvm_cpuid2_n()
    obj.nent = n
    return obj


# --------------------------------------------------------------------------------------
# ioctl numbers (include/uapi/linux/kvm.h)
# --------------------------------------------------------------------------------------
# system ioctls
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, u64)
KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, kvm_userspace_memory_region2)
KVM_SET_MEMORY_ATTRIBUTES = _IOW(KVMIO, 0xd2, kvm_memory_attributes)
KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xd4, kvm_create_guest_memfd)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, kvm_enable_cap)
KVM_CLEAR_DIRTY_LOG = _IOWR(KVMIO, 0xc0, kvm_clear_dirty_log)
KVM_GET_STATS_FD = _IO(KVMIO, 0xce)
# vCPU ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2)
KVM_PRE_FAULT_MEMORY = _IOWR(KVMIO, 0xd5, kvm_pre_fault_memory)


# --------------------------------------------------------------------------------------
# include/uapi/linux/fs.h: PAGEMAP_SCAN (Linux 6.7+)
# --------------------------------------------------------------------------------------
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8

PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1


class page_region(ctypes.Structure):
    _fields_ = [
        ("start", u64),
        ("end", u64),
        ("categories", u64),
    ]


class pm_scan_arg(ctypes.Structure):
    _fields_ = [
        ("size", u64),
        ("flags", u64),
        ("start", u64),
        ("end", u64),
        ("walk_end", u64),
        ("vec", u64),
        ("vec_len", u64),
        ("max_pages", u64),
        ("category_inverted", u64),
        ("category_mask", u64),
        ("category_anyof_mask", u64),
        ("return_mask", u64),
    ]


PAGEMAP_SCAN = _IOWR(ord("f"), 16, pm_scan_arg)


# --------------------------------------------------------------------------------------
# mm / mman constants (include/uapi/asm-generic/mman*.h, x86-64 values)
# --------------------------------------------------------------------------------------
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_HUGETLB = 0x40000
MAP_HUGE_SHIFT = 26
MAP_HUGE_2MB = 21 << MAP_HUGE_SHIFT
MAP_HUGE_1GB = 30 << MAP_HUGE_SHIFT
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_COLLAPSE = 25
# include/uapi/linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


#: request number -> "KVM_..." name, for error messages.
IOCTL_NAMES: dict[int, str] = {
    v: k for k, v in dict(globals()).items()
    if (k.startswith("KVM_") or k == "PAGEMAP_SCAN") and isinstance(v, int)
    and k not in ("KVM_API_VERSION",) and v > 0xFF and not k.startswith(
        ("KVM_EXIT_", "KVM_CAP_", "KVM_STATS_", "KVM_MEM_", "KVM_DIRTY_LOG_",
         "KVM_INTERNAL_ERROR_", "KVM_NR_", "KVM_X86_", "KVM_MEMORY_ATTRIBUTE_"))
}
