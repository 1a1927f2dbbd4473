"""A tiny KVM userspace: /dev/kvm, VMs, vCPUs, memslots, stats and host-page inspection.

Dependency-free (ctypes, fcntl, mmap, os).  Every failing ioctl raises :class:`KvmError`
naming the ioctl and the errno; a missing or inaccessible ``/dev/kvm`` raises
:class:`KvmUnavailable`.  All objects own their fds / mappings and are context managers.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import uapi as u
from .guest import (ACCESS_KINDS, PAGE_2M, PAGE_4K, RET_OPCODE, GuestCode,
                    IdentityPageTables, page_tables_needed, touch_loop_code)

__all__ = [
    "KvmCheckError", "KvmError", "KvmUnavailable",
    "KvmSystem", "Vm", "Vcpu", "HostMemory", "Memslot", "ExitInfo", "GuestMemfd",
    "StatDescriptor", "StatsFd", "parse_stats_buffer", "NativeMsrProbe", "TouchGuest",
    "read_module_params", "write_module_param", "kvm_vendor_modules", "hugetlb_free_pages", "GuestError",
    "fill_window", "pagemap_scan", "smaps_huge_bytes", "NATIVE_EXEC_MSR", "DEFAULT_KVM_PATH",
]

DEFAULT_KVM_PATH = "/dev/kvm"

#: Undocumented MSR of this host's KVM build (kvm_pvm): bit 0 set by a host-initiated
#: KVM_SET_MSRS makes the vCPU run natively instead of emulating every instruction.
#: Reads back as 0x400 when refused, 0x401 when accepted.  See TouchGuest for the
#: conditions under which it is accepted and takes effect.
NATIVE_EXEC_MSR = 0x4B564D10

# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


class KvmCheckError(Exception):
    """Base class of every error raised by tdpsim.kvmcheck."""


class KvmError(KvmCheckError):
    """An ioctl (or mm syscall) failed.  ``str(e)`` is e.g.
    ``"KVM_SET_USER_MEMORY_REGION failed: EINVAL (22)"``."""

    def __init__(self, op: str, err: int, detail: str = ""):
        self.op = op
        self.errno = err
        self.errname = _errno.errorcode.get(err, "E?")
        msg = f"{op} failed: {self.errname} ({err})"
        if detail:
            msg += f" [{detail}]"
        super().__init__(msg)


class KvmUnavailable(KvmCheckError):
    """KVM cannot be used on this machine (no device, no permission, wrong API)."""


# --------------------------------------------------------------------------------------
# libc via ctypes
# --------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                         ctypes.c_void_p]
_libc.mremap.restype = ctypes.c_void_p
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value


def _ioctl(fd: int, request: int, arg=0, *, name: str | None = None, retry_eintr: bool = True) -> int:
    """ioctl(2) on *fd*; *arg* is an int or a ctypes object (passed by reference)."""
    if isinstance(arg, (ctypes.Structure, ctypes.Union, ctypes.Array)):
        ptr = ctypes.addressof(arg)
    else:
        ptr = int(arg)
    while True:
        ret = _libc.ioctl(fd, request, ptr)
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err == _errno.EINTR and retry_eintr:
            continue
        raise KvmError(name or u.IOCTL_NAMES.get(request, f"ioctl {request:#x}"), err)


def _mm_check(ret: int, op: str) -> None:
    if ret != 0:
        raise KvmError(op, ctypes.get_errno())


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


# --------------------------------------------------------------------------------------
# host memory
# --------------------------------------------------------------------------------------
class HostMemory:
    """Anonymous host memory backing a memslot.

    The mapping is laid out so that ``frame_base`` is 2 MiB aligned and the memory given
    to KVM starts at ``addr = frame_base + hva_skew``.  The whole 2 MiB-rounded area
    ``[frame_base, frame_base + frame_len)`` is madvised (THP on: MADV_HUGEPAGE, off:
    MADV_NOHUGEPAGE; None: leave the system default), so a tail frame of a slot that
    is not a multiple of 2 MiB can still be a THP on the host.

    With ``hugetlb=True`` the memory is MAP_HUGETLB|MAP_HUGE_2MB from the hugetlb pool
    (needs ``hugetlb_free_pages() >= frame_len / 2 MiB``; hva_skew must be a multiple of
    2 MiB).
    """

    def __init__(self, size: int, *, hva_skew: int = 0, thp: bool | None = True,
                 hugetlb: bool = False):
        if size <= 0 or size % PAGE_4K:
            raise ValueError("size must be a positive multiple of 4 KiB")
        if hva_skew < 0 or hva_skew % PAGE_4K:
            raise ValueError("hva_skew must be a non-negative multiple of 4 KiB")
        self.size = size
        self.hva_skew = hva_skew
        self.thp = thp
        self.hugetlb = hugetlb
        self.frame_len = _round_up(hva_skew + size, PAGE_2M)
        self._maps: list[tuple[int, int]] = []      # (addr, len) to munmap on close
        self._split: set[int] = set()               # frames split_thp split (smaps fallback)
        prot = u.PROT_READ | u.PROT_WRITE
        if hugetlb:
            if hva_skew % PAGE_2M:
                raise ValueError("hugetlb memory cannot be skewed by less than 2 MiB")
            flags = u.MAP_PRIVATE | u.MAP_ANONYMOUS | u.MAP_HUGETLB | u.MAP_HUGE_2MB
            addr = _libc.mmap(None, self.frame_len, prot, flags, -1, 0)
            if addr in (None, _MAP_FAILED):
                raise KvmError("mmap(MAP_HUGETLB)", ctypes.get_errno())
            self._maps.append((addr, self.frame_len))
            self.frame_base = addr
        else:
            total = self.frame_len + PAGE_2M             # slack for 2 MiB alignment
            addr = _libc.mmap(None, total, prot, u.MAP_PRIVATE | u.MAP_ANONYMOUS | u.MAP_NORESERVE,
                              -1, 0)
            if addr in (None, _MAP_FAILED):
                raise KvmError("mmap", ctypes.get_errno())
            self._maps.append((addr, total))
            self.frame_base = _round_up(addr, PAGE_2M)
            if thp is not None:
                self.madvise(u.MADV_HUGEPAGE if thp else u.MADV_NOHUGEPAGE,
                             self.frame_base, self.frame_len)
        self.addr = self.frame_base + hva_skew

    # -- helpers -------------------------------------------------------------------
    def madvise(self, advice: int, start: int, length: int) -> None:
        _mm_check(_libc.madvise(start, length, advice), f"madvise({advice})")

    def prefault(self, fill: int = 0, whole_frames: bool = True) -> None:
        """Write every byte (memset) so every host page exists before KVM looks at it.

        With *whole_frames* the full 2 MiB-rounded area is written (not just the slot),
        so THPs can be allocated for partially covered frames too.
        """
        if whole_frames:
            ctypes.memset(self.frame_base, fill, self.frame_len)
        else:
            ctypes.memset(self.addr, fill, self.size)

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError("write outside the memory")
        ctypes.memmove(self.addr + offset, data, len(data))

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise ValueError("read outside the memory")
        return ctypes.string_at(self.addr + offset, length)

    def split_thp(self, offset: int, length: int, method: str = "dontneed") -> None:
        """Split host THPs covering ``[addr+offset, addr+offset+length)``.

        *method*:

        * ``"dontneed"``: MADV_DONTNEED the first 4 KiB of each 2 MiB frame in the range
          (forces a PMD split; the page is refilled with zeros on next touch),
        * ``"dontneed_frame"``: MADV_DONTNEED the whole of each frame (the THP is unmapped
          and freed; the next touch may allocate a new THP),
        * ``"nohugepage"``: MADV_NOHUGEPAGE on the range (changes the VMA only, existing
          THPs are *not* split by the kernel; useful as a negative control),
        * ``"mremap"``: move the first 4 KiB of each frame away and back with mremap
          (splits the PMD but keeps the data).
        """
        start = self.addr + offset
        end = start + length
        frame = start - start % PAGE_2M
        if method == "nohugepage":
            a = start - start % PAGE_4K
            self.madvise(u.MADV_NOHUGEPAGE, a, _round_up(end, PAGE_4K) - a)
            return
        while frame < end:
            page = max(frame, start - start % PAGE_4K)
            self._split.add((frame - (self.addr - self.addr % PAGE_2M)) // PAGE_2M)
            if method == "dontneed":
                self.madvise(u.MADV_DONTNEED, page, PAGE_4K)
            elif method == "dontneed_frame":
                self.madvise(u.MADV_DONTNEED, page, min(end, frame + PAGE_2M) - page)
            elif method == "mremap":
                tmp = _libc.mmap(None, PAGE_4K, u.PROT_READ | u.PROT_WRITE,
                                 u.MAP_PRIVATE | u.MAP_ANONYMOUS, -1, 0)
                if tmp in (None, _MAP_FAILED):
                    raise KvmError("mmap", ctypes.get_errno())
                r = _libc.mremap(page, PAGE_4K, PAGE_4K, u.MREMAP_MAYMOVE | u.MREMAP_FIXED, tmp)
                if r in (None, _MAP_FAILED):
                    raise KvmError("mremap", ctypes.get_errno())
                r = _libc.mremap(tmp, PAGE_4K, PAGE_4K, u.MREMAP_MAYMOVE | u.MREMAP_FIXED, page)
                if r in (None, _MAP_FAILED):
                    raise KvmError("mremap", ctypes.get_errno())
            else:
                raise ValueError(f"unknown THP split method {method!r}")
            frame += PAGE_2M

    def frame_offset(self, frame: int) -> int:
        """Offset (from ``addr``) of the start of host 2 MiB frame *frame* (0 = the frame
        holding ``addr``), clamped to the memory."""
        return max(0, frame * PAGE_2M - self.hva_skew % PAGE_2M)

    def split_thp_frames(self, frames: Iterable[int], method: str = "dontneed") -> None:
        """:meth:`split_thp` on whole host 2 MiB frames (indices as in :meth:`huge_frames`)."""
        for f in frames:
            off = self.frame_offset(f)
            end = min(self.size, (f + 1) * PAGE_2M - self.hva_skew % PAGE_2M)
            if end > off:
                self.split_thp(off, end - off, method)

    def huge_frames(self) -> tuple[bool, ...]:
        """For each 2 MiB host frame overlapping the memory: is it mapped by a huge page?

        PAGEMAP_SCAN (6.7+) answers per frame.  Older kernels (6.1) have no per-frame
        answer in /proc, so :meth:`_huge_frames_smaps` counts the PMD-mapped bytes of the
        VMA in smaps and attributes them to the frames this object has not split."""
        first = self.addr - self.addr % PAGE_2M
        nframes = (_round_up(self.addr + self.size, PAGE_2M) - first) // PAGE_2M
        huge = [False] * nframes
        try:
            regions = pagemap_scan(first, first + nframes * PAGE_2M)
        except KvmError as e:
            if e.errno not in (_errno.ENOTTY, _errno.EINVAL):
                raise
            return self._huge_frames_smaps(first, nframes)
        for start, end, cats in regions:
            if cats & u.PAGE_IS_HUGE:
                for f in range((start - first) // PAGE_2M, (end - 1 - first) // PAGE_2M + 1):
                    huge[f] = True
        return tuple(huge)

    def _huge_frames_smaps(self, first: int, nframes: int) -> tuple[bool, ...]:
        """The smaps fallback of :meth:`huge_frames`: ``AnonHugePages`` (THP mapped by a
        PMD) or ``Private_Hugetlb`` of the VMAs over the frames, in whole frames, given to
        the frames not split by :meth:`split_thp` (split frames first lose hugeness)."""
        huge_bytes = smaps_huge_bytes(first, first + nframes * PAGE_2M)
        count = huge_bytes // PAGE_2M
        order = [f for f in range(nframes) if f not in self._split] + sorted(self._split)
        chosen = set(order[:count])
        return tuple(f in chosen for f in range(nframes))

    def close(self) -> None:
        while self._maps:
            addr, length = self._maps.pop()
            _libc.munmap(addr, length)

    def __enter__(self) -> "HostMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def smaps_huge_bytes(start: int, end: int, smaps: str = "/proc/self/smaps") -> int:
    """Bytes of ``AnonHugePages`` + ``Private_Hugetlb`` + ``Shared_Hugetlb`` over the VMAs
    of this process that overlap ``[start, end)`` (whole VMAs: callers keep the range to
    VMAs of their own)."""
    total = 0
    inside = False
    with open(smaps) as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo < end and hi > start
            elif inside and head in ("AnonHugePages:", "Private_Hugetlb:", "Shared_Hugetlb:"):
                total += int(line.split()[1]) * 1024
    return total


def pagemap_scan(start: int, end: int, *, return_mask: int = u.PAGE_IS_PRESENT | u.PAGE_IS_HUGE,
                 anyof_mask: int = u.PAGE_IS_PRESENT) -> list[tuple[int, int, int]]:
    """PAGEMAP_SCAN on this process: [(start, end, categories)] for pages matching *anyof_mask*."""
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        out: list[tuple[int, int, int]] = []
        nvec = 512
        vec = (u.page_region * nvec)()
        pos = start
        while pos < end:
            arg = u.pm_scan_arg(size=ctypes.sizeof(u.pm_scan_arg), flags=0, start=pos, end=end,
                                vec=ctypes.addressof(vec), vec_len=nvec,
                                category_anyof_mask=anyof_mask, return_mask=return_mask)
            n = _ioctl(fd, u.PAGEMAP_SCAN, arg)
            out.extend((vec[i].start, vec[i].end, vec[i].categories) for i in range(n))
            if arg.walk_end <= pos:
                break
            pos = arg.walk_end
        return out
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# binary stats
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatDescriptor:
    name: str
    flags: int
    exponent: int
    size: int            # number of u64 values
    offset: int          # byte offset in the data block
    bucket_size: int

    @property
    def type(self) -> int:
        return self.flags & u.KVM_STATS_TYPE_MASK

    @property
    def unit(self) -> int:
        return self.flags & u.KVM_STATS_UNIT_MASK

    @property
    def cumulative(self) -> bool:
        return self.type == u.KVM_STATS_TYPE_CUMULATIVE


def _parse_header_and_descs(buf: bytes) -> tuple[u.kvm_stats_header, str, list[StatDescriptor]]:
    hsz = ctypes.sizeof(u.kvm_stats_header)
    if len(buf) < hsz:
        raise ValueError("stats buffer shorter than kvm_stats_header")
    hdr = u.kvm_stats_header.from_buffer_copy(buf[:hsz])
    ident = buf[hdr.id_offset: hdr.id_offset + hdr.name_size].split(b"\0", 1)[0].decode()
    dsz = ctypes.sizeof(u.kvm_stats_desc)
    step = dsz + hdr.name_size
    descs = []
    for i in range(hdr.num_desc):
        off = hdr.desc_offset + i * step
        if off + step > len(buf):
            raise ValueError(f"stats buffer truncated in descriptor {i}")
        d = u.kvm_stats_desc.from_buffer_copy(buf[off: off + dsz])
        name = buf[off + dsz: off + step].split(b"\0", 1)[0].decode()
        descs.append(StatDescriptor(name, d.flags, d.exponent, d.size, d.offset, d.bucket_size))
    return hdr, ident, descs


def _values(descs: Iterable[StatDescriptor], data: bytes) -> dict[str, int | tuple[int, ...]]:
    out: dict[str, int | tuple[int, ...]] = {}
    for d in descs:
        if d.offset + 8 * d.size > len(data):
            raise ValueError(f"stats data truncated at {d.name}")
        vals = struct.unpack_from(f"<{d.size}Q", data, d.offset)
        out[d.name] = vals[0] if d.size == 1 else tuple(vals)
    return out


def parse_stats_buffer(buf: bytes) -> dict[str, int | tuple[int, ...]]:
    """Parse a complete KVM binary-stats file image (header, id, descriptors, data).

    Returns name -> value; histogram stats (size > 1) map to a tuple of buckets.
    """
    hdr, _, descs = _parse_header_and_descs(buf)
    return _values(descs, buf[hdr.data_offset:])


class StatsFd:
    """A KVM_GET_STATS_FD file: descriptors parsed once, data re-read on each snapshot."""

    def __init__(self, fd: int):
        self.fd = fd
        hsz = ctypes.sizeof(u.kvm_stats_header)
        head = os.pread(fd, hsz, 0)
        hdr = u.kvm_stats_header.from_buffer_copy(head)
        desc_end = hdr.desc_offset + hdr.num_desc * (ctypes.sizeof(u.kvm_stats_desc) + hdr.name_size)
        meta = os.pread(fd, max(desc_end, hdr.id_offset + hdr.name_size), 0)
        self.header, self.id, self.descriptors = _parse_header_and_descs(meta)
        self.data_size = max((d.offset + 8 * d.size for d in self.descriptors), default=0)

    def read(self) -> dict[str, int | tuple[int, ...]]:
        data = os.pread(self.fd, self.data_size, self.header.data_offset)
        return _values(self.descriptors, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --------------------------------------------------------------------------------------
# /dev/kvm
# --------------------------------------------------------------------------------------
class KvmSystem:
    """An open /dev/kvm."""

    def __init__(self, path: str = DEFAULT_KVM_PATH):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"KVM is not available: {path} does not exist (no KVM in this kernel, or the "
                f"device is not exposed to this container).") from None
        except PermissionError:
            raise KvmUnavailable(
                f"KVM is not available: permission denied opening {path} (run as root or "
                f"join the group that owns it, usually 'kvm').") from None
        except OSError as e:
            raise KvmUnavailable(
                f"KVM is not available: opening {path} failed with "
                f"{_errno.errorcode.get(e.errno, '?')} ({e.errno}).") from None
        try:
            ver = _ioctl(self.fd, u.KVM_GET_API_VERSION)
        except KvmError as e:
            os.close(self.fd)
            raise KvmUnavailable(f"KVM is not available: {path} is not a KVM device ({e}).") from None
        if ver != u.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(
                f"KVM is not available: {path} reports API version {ver}, expected "
                f"{u.KVM_API_VERSION}.")
        self.api_version = ver
        self.vcpu_mmap_size = _ioctl(self.fd, u.KVM_GET_VCPU_MMAP_SIZE)

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, u.KVM_CHECK_EXTENSION, cap)

    def supported_cpuid(self):
        n = 64
        while True:
            cpuid = u.make_kvm_cpuid2(n)
            try:
                _ioctl(self.fd, u.KVM_GET_SUPPORTED_CPUID, cpuid)
                return cpuid
            except KvmError as e:
                if e.errno != _errno.E2BIG or n > 4096:
                    raise
                n *= 2

    def msr_index_list(self) -> list[int]:
        hdr = u.kvm_msr_list(nmsrs=0)
        try:
            _ioctl(self.fd, u.KVM_GET_MSR_INDEX_LIST, hdr)
        except KvmError as e:
            if e.errno != _errno.E2BIG:
                raise
        n = hdr.nmsrs

        class _list(ctypes.Structure):
            _fields_ = [("nmsrs", ctypes.c_uint32), ("indices", ctypes.c_uint32 * n)]
        lst = _list(nmsrs=n)
        _ioctl(self.fd, u.KVM_GET_MSR_INDEX_LIST, lst)
        return list(lst.indices[: lst.nmsrs])

    def create_vm(self, vm_type: int = u.KVM_X86_DEFAULT_VM) -> "Vm":
        return Vm(self, _ioctl(self.fd, u.KVM_CREATE_VM, vm_type))

    def supports_vm_type(self, vm_type: int) -> bool:
        """KVM_CAP_VM_TYPES is a bitmap of the KVM_CREATE_VM types (v6.8+; 0 before)."""
        return bool(self.check_extension(u.KVM_CAP_VM_TYPES) & (1 << vm_type))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "KvmSystem":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GuestMemfd:
    """A guest_memfd (KVM_CREATE_GUEST_MEMFD): the private memory of one VM."""

    def __init__(self, vm: "Vm", size: int):
        self.size = size
        self.fd = _ioctl(vm.fd, u.KVM_CREATE_GUEST_MEMFD, u.kvm_create_guest_memfd(size=size))

    def punch_hole(self, offset: int, length: int) -> None:
        """fallocate(PUNCH_HOLE | KEEP_SIZE): ``kvm_gmem_punch_hole`` zaps the range's
        mappings, then frees its pages."""
        _mm_check(_libc.fallocate(self.fd, u.FALLOC_FL_PUNCH_HOLE | u.FALLOC_FL_KEEP_SIZE,
                                  offset, length), "fallocate(guest_memfd, PUNCH_HOLE)")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Memslot:
    slot: int
    gpa: int
    size: int
    hva: int
    flags: int
    memory: HostMemory | None = None
    gmem: GuestMemfd | None = None

    @property
    def npages(self) -> int:
        return self.size // PAGE_4K


class Vm:
    """A KVM VM fd with its memslots and vCPUs."""

    def __init__(self, system: KvmSystem, fd: int):
        self.system = system
        self.fd = fd
        self.memslots: dict[int, Memslot] = {}
        self.vcpus: list[Vcpu] = []
        self._stats: StatsFd | None = None
        self._owned_memory: list[HostMemory] = []
        self._guest_memfds: list[GuestMemfd] = []

    # -- memslots ------------------------------------------------------------------
    def set_user_memory_region(self, slot: int, gpa: int, size: int, hva: int, flags: int = 0) -> None:
        r = u.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa,
                                          memory_size=size, userspace_addr=hva)
        _ioctl(self.fd, u.KVM_SET_USER_MEMORY_REGION, r)

    def set_user_memory_region2(self, slot: int, gpa: int, size: int, hva: int, flags: int,
                                gmem: GuestMemfd, gmem_offset: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION2 with a guest_memfd (KVM_MEM_GUEST_MEMFD)."""
        r = u.kvm_userspace_memory_region2(slot=slot, flags=flags | u.KVM_MEM_GUEST_MEMFD,
                                           guest_phys_addr=gpa, memory_size=size,
                                           userspace_addr=hva, guest_memfd_offset=gmem_offset,
                                           guest_memfd=gmem.fd)
        _ioctl(self.fd, u.KVM_SET_USER_MEMORY_REGION2, r)

    def add_memslot(self, slot: int, gpa: int, memory: HostMemory, *, flags: int = 0,
                    size: int | None = None, own: bool = True,
                    gmem: GuestMemfd | None = None) -> Memslot:
        """A memslot over *memory* (the shared side); with *gmem* its private side is
        that guest_memfd from offset 0."""
        size = memory.size if size is None else size
        if gmem is None:
            self.set_user_memory_region(slot, gpa, size, memory.addr, flags)
        else:
            self.set_user_memory_region2(slot, gpa, size, memory.addr, flags, gmem)
        ms = Memslot(slot, gpa, size, memory.addr, flags, memory, gmem)
        self.memslots[slot] = ms
        if own:
            self._owned_memory.append(memory)
        return ms

    def set_memslot_flags(self, slot: int, flags: int) -> None:
        ms = self.memslots[slot]
        self.set_user_memory_region(slot, ms.gpa, ms.size, ms.hva, flags)
        ms.flags = flags

    def set_dirty_logging(self, slot: int, enabled: bool) -> None:
        f = self.memslots[slot].flags
        f = (f | u.KVM_MEM_LOG_DIRTY_PAGES) if enabled else (f & ~u.KVM_MEM_LOG_DIRTY_PAGES)
        self.set_memslot_flags(slot, f)

    def delete_memslot(self, slot: int) -> Memslot:
        ms = self.memslots.pop(slot)
        self.set_user_memory_region(slot, ms.gpa, 0, ms.hva, 0)
        return ms

    def move_memslot(self, slot: int, gpa: int) -> None:
        """KVM_MR_MOVE: same slot, size, memory and flags at another GPA."""
        ms = self.memslots[slot]
        self.set_user_memory_region(slot, gpa, ms.size, ms.hva, ms.flags)
        ms.gpa = gpa

    def get_dirty_log(self, slot: int) -> bytes:
        """KVM_GET_DIRTY_LOG: the slot's bitmap (bit n = page n of the slot)."""
        ms = self.memslots[slot]
        buf = (ctypes.c_uint8 * (_round_up(ms.npages, 64) // 8))()
        _ioctl(self.fd, u.KVM_GET_DIRTY_LOG, u.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(buf)))
        return bytes(buf)

    def clear_dirty_log(self, slot: int, first_page: int = 0, num_pages: int | None = None,
                        bitmap: bytes | None = None) -> None:
        """KVM_CLEAR_DIRTY_LOG (needs enable_manual_dirty_log_protect()).  *first_page*
        must be a multiple of 64; default bitmap = all ones."""
        ms = self.memslots[slot]
        if num_pages is None:
            num_pages = ms.npages - first_page
        nbytes = _round_up(num_pages, 64) // 8
        buf = (ctypes.c_uint8 * nbytes).from_buffer_copy(bitmap if bitmap is not None else b"\xff" * nbytes)
        _ioctl(self.fd, u.KVM_CLEAR_DIRTY_LOG,
               u.kvm_clear_dirty_log(slot=slot, num_pages=num_pages, first_page=first_page,
                                     dirty_bitmap=ctypes.addressof(buf)))

    def set_memory_attributes(self, gpa: int, size: int, attributes: int) -> None:
        """KVM_SET_MEMORY_ATTRIBUTES (KVM_MEMORY_ATTRIBUTE_PRIVATE or 0 = shared)."""
        _ioctl(self.fd, u.KVM_SET_MEMORY_ATTRIBUTES,
               u.kvm_memory_attributes(address=gpa, size=size, attributes=attributes))

    def create_guest_memfd(self, size: int) -> GuestMemfd:
        """A guest_memfd of *size* bytes, closed with the VM."""
        g = GuestMemfd(self, size)
        self._guest_memfds.append(g)
        return g

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        ec = u.kvm_enable_cap(cap=cap, flags=flags)
        for i, a in enumerate(args):
            ec.args[i] = a
        _ioctl(self.fd, u.KVM_ENABLE_CAP, ec)

    def enable_manual_dirty_log_protect(self, initially_set: bool = False) -> None:
        mode = u.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
        if initially_set:
            mode |= u.KVM_DIRTY_LOG_INITIALLY_SET
        self.enable_cap(u.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, mode)

    # -- vcpus / stats ---------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int = 0) -> "Vcpu":
        v = Vcpu(self, vcpu_id, _ioctl(self.fd, u.KVM_CREATE_VCPU, vcpu_id))
        self.vcpus.append(v)
        return v

    def stats_fd(self) -> StatsFd:
        if self._stats is None:
            self._stats = StatsFd(_ioctl(self.fd, u.KVM_GET_STATS_FD))
        return self._stats

    def stats(self) -> dict[str, int | tuple[int, ...]]:
        """VM statistics (pages_4k, pages_2m, pages_1g, remote_tlb_flush, ...)."""
        return self.stats_fd().read()

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for m in self._owned_memory:
            m.close()
        self._owned_memory.clear()
        for g in self._guest_memfds:
            g.close()
        self._guest_memfds.clear()

    def __enter__(self) -> "Vm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class ExitInfo:
    reason: int
    name: str
    rip: int | None = None
    io_port: int | None = None
    io_direction: int | None = None
    mmio_addr: int | None = None
    mmio_is_write: bool | None = None
    internal_suberror: int | None = None
    hardware_reason: int | None = None


@dataclass(frozen=True)
class NativeMsrProbe:
    """Outcome of setting bit 0 of NATIVE_EXEC_MSR (host-initiated KVM_SET_MSRS).

    ``accepted``: KVM_SET_MSRS reported the MSR as written; ``readback``: value from
    KVM_GET_MSRS (None if unreadable); ``listed``: in KVM_GET_MSR_INDEX_LIST.  Whether
    it actually *took effect* is judged from the stats after a run (see host_matrix).
    """

    msr: int
    accepted: bool
    readback: int | None
    listed: bool
    error: str | None = None


class Vcpu:
    """A vCPU fd with its mmapped kvm_run."""

    def __init__(self, vm: Vm, vcpu_id: int, fd: int):
        self.vm = vm
        self.id = vcpu_id
        self.fd = fd
        self._stats: StatsFd | None = None
        self._run_len = vm.system.vcpu_mmap_size
        addr = _libc.mmap(None, self._run_len, u.PROT_READ | u.PROT_WRITE, u.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            os.close(fd)
            raise KvmError("mmap(kvm_run)", err)
        self._run_addr = addr
        self.kvm_run = u.kvm_run.from_address(addr)

    # -- registers ---------------------------------------------------------------------
    def get_regs(self) -> u.kvm_regs:
        r = u.kvm_regs()
        _ioctl(self.fd, u.KVM_GET_REGS, r)
        return r

    def set_regs(self, regs: u.kvm_regs | None = None, **kw: int) -> None:
        if regs is None:
            regs = self.get_regs()
        for k, v in kw.items():
            setattr(regs, k, v)
        _ioctl(self.fd, u.KVM_SET_REGS, regs)

    def get_sregs(self) -> u.kvm_sregs:
        s = u.kvm_sregs()
        _ioctl(self.fd, u.KVM_GET_SREGS, s)
        return s

    def set_sregs(self, sregs: u.kvm_sregs) -> None:
        _ioctl(self.fd, u.KVM_SET_SREGS, sregs)

    def set_cpuid2(self, cpuid) -> None:
        _ioctl(self.fd, u.KVM_SET_CPUID2, cpuid)

    def set_msrs(self, msrs: Mapping[int, int]) -> int:
        """KVM_SET_MSRS (host-initiated); returns how many MSRs KVM accepted (in order)."""
        m = u.make_kvm_msrs(len(msrs))
        m.nmsrs = len(msrs)
        for i, (idx, val) in enumerate(msrs.items()):
            m.entries[i].index = idx
            m.entries[i].data = val
        return _ioctl(self.fd, u.KVM_SET_MSRS, m)

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """KVM_GET_MSRS; MSRs KVM refuses (and all after them) are absent from the result."""
        idx = list(indices)
        m = u.make_kvm_msrs(len(idx))
        m.nmsrs = len(idx)
        for i, x in enumerate(idx):
            m.entries[i].index = x
        n = _ioctl(self.fd, u.KVM_GET_MSRS, m)
        return {m.entries[i].index: m.entries[i].data for i in range(n)}

    def setup_long_mode(self, cr3: int) -> None:
        """64-bit long mode, paging on, CPL0, flat segments, no GDT/IDT (limit 0).

        Any exception therefore escalates to a triple fault: KVM_EXIT_SHUTDOWN.
        """
        s = self.get_sregs()
        code = u.kvm_segment(base=0, limit=0xFFFFFFFF, selector=0x8, type=0xB, present=1,
                             dpl=0, db=0, s=1, l=1, g=1)
        data = u.kvm_segment(base=0, limit=0xFFFFFFFF, selector=0x10, type=0x3, present=1,
                             dpl=0, db=1, s=1, l=0, g=1)
        s.cs = code
        s.ds = s.es = s.fs = s.gs = s.ss = data
        s.tr = u.kvm_segment(base=0, limit=0x67, selector=0x18, type=0xB, present=1, s=0)
        s.ldt = u.kvm_segment(base=0, limit=0xFFFF, selector=0, type=0x2, present=1, s=0)
        s.gdt = u.kvm_dtable(base=0, limit=0)
        s.idt = u.kvm_dtable(base=0, limit=0)
        CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = (
            1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 18, 1 << 31)
        CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
        EFER_LME, EFER_LMA = 1 << 8, 1 << 10
        s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
        s.cr3 = cr3
        s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
        s.efer = EFER_LME | EFER_LMA
        self.set_sregs(s)

    def probe_native_execution(self, msr: int = NATIVE_EXEC_MSR) -> NativeMsrProbe:
        """Try to set bit 0 of the (undocumented) native-execution MSR; never raises."""
        listed = False
        try:
            listed = msr in self.vm.system.msr_index_list()
        except KvmError:
            pass
        try:
            accepted = self.set_msrs({msr: 1}) == 1
        except KvmError as e:
            return NativeMsrProbe(msr, False, None, listed, str(e))
        try:
            readback = self.get_msrs([msr]).get(msr)
        except KvmError:
            readback = None
        return NativeMsrProbe(msr, accepted, readback, listed)

    def pre_fault_memory(self, gpa: int, size: int) -> None:
        """KVM_PRE_FAULT_MEMORY over [gpa, gpa + size): KVM advances ``gpa`` / shrinks
        ``size`` as it maps and may stop early (EINTR, or after a partial map), so ask
        again until nothing is left."""
        r = u.kvm_pre_fault_memory(gpa=gpa, size=size)
        while r.size:
            _ioctl(self.fd, u.KVM_PRE_FAULT_MEMORY, r)

    # -- running ---------------------------------------------------------------------
    def run(self) -> ExitInfo:
        """One KVM_RUN; returns the decoded exit."""
        _ioctl(self.fd, u.KVM_RUN, 0)
        return self.exit_info()

    def exit_info(self) -> ExitInfo:
        r = self.kvm_run
        reason = r.exit_reason
        name = u.KVM_EXIT_NAMES.get(reason, f"KVM_EXIT_{reason}")
        kw: dict = {}
        if reason == u.KVM_EXIT_IO:
            kw.update(io_port=r.io.port, io_direction=r.io.direction)
        elif reason == u.KVM_EXIT_MMIO:
            kw.update(mmio_addr=r.mmio.phys_addr, mmio_is_write=bool(r.mmio.is_write))
        elif reason == u.KVM_EXIT_INTERNAL_ERROR:
            kw.update(internal_suberror=r.internal.suberror)
        elif reason == u.KVM_EXIT_FAIL_ENTRY:
            kw.update(hardware_reason=r.fail_entry.hardware_entry_failure_reason)
        elif reason == u.KVM_EXIT_UNKNOWN:
            kw.update(hardware_reason=r.hw.hardware_exit_reason)
        try:
            kw["rip"] = self.get_regs().rip
        except KvmError:
            pass
        return ExitInfo(reason, name, **kw)

    def stats(self) -> dict[str, int | tuple[int, ...]]:
        """vCPU statistics (pf_fixed, insn_emulation, exits, ...)."""
        if self._stats is None:
            self._stats = StatsFd(_ioctl(self.fd, u.KVM_GET_STATS_FD))
        return self._stats.read()

    def close(self) -> None:
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        if self._run_addr:
            self.kvm_run = None
            _libc.munmap(self._run_addr, self._run_len)
            self._run_addr = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Vcpu":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# a complete tiny guest
# --------------------------------------------------------------------------------------
class GuestError(KvmCheckError):
    """The guest did not reach its hlt (exception -> SHUTDOWN, unexpected IO/MMIO, ...)."""

    def __init__(self, exit: ExitInfo, expected_rip: int):
        self.exit = exit
        detail = f"rip={exit.rip:#x}" if exit.rip is not None else "rip=?"
        if exit.mmio_addr is not None:
            detail += f" mmio={exit.mmio_addr:#x} write={exit.mmio_is_write}"
        if exit.io_port is not None:
            detail += f" port={exit.io_port:#x}"
        if exit.internal_suberror is not None:
            detail += f" suberror={exit.internal_suberror}"
        super().__init__(f"guest stopped with {exit.name} ({detail}), expected "
                         f"KVM_EXIT_HLT at rip={expected_rip:#x}")


SYS_SLOT = 0
# Layout of the system slot.  Two quirks of the PVM-based KVM measured here shape it
# (both found by probing, see the kvmcheck report):
#  * KVM_SET_MSRS of NATIVE_EXEC_MSR only sticks when a memslot covers GPA 0;
#  * native execution then only happens while CR3 points at an *odd* 4 KiB frame
#    (bit 12 set; checked at KVM_RUN, not when the MSR is written); with an even
#    PML4 frame the vCPU silently keeps emulating;
#  * natively executing, the guest's CPL0 code needs U/S=1 in its page tables
#    (else SHUTDOWN on the first fetch) -- IdentityPageTables sets it by default.
SYS_GPA = 0x0
CODE_OFFSET = 0x1000               # page 0 stays unused (no code at VA 0)
STACK_TOP_OFFSET = 0x3000          # stack page is 0x2000..0x2fff
PT_OFFSET = 0x3000                 # PML4 at GPA 0x3000: odd frame number


class TouchGuest:
    """One VM + one vCPU running :func:`touch_loop_code` over identity-mapped memory.

    Layout: slot 0 ("system") at GPA 0 holds the code (page 1), the stack (page 2) and
    the page tables (page 3 on, PML4 first); page 0 is unused.  It is always mapped with 4 KiB guest
    pages and never shares a 2 MiB frame with a test window.  (The undocumented native
    execution MSR is only accepted by this host's KVM when a memslot covers GPA 0, and
    only takes effect when CR3 is an odd frame number.)  Test windows are added with
    :meth:`add_window` and identity-mapped with the chosen guest page size.  Call
    :meth:`finalize` once all windows exist (writes page tables, sets CPUID, sregs).
    """

    #: byte distance between the three loop variants inside the code page
    CODE_STRIDE = 0x80

    def __init__(self, system: KvmSystem, access: str = "write", *, native: bool = True,
                 max_window_span: int = 1 << 30, vm_type: int = u.KVM_X86_DEFAULT_VM):
        self.system = system
        self.access = access
        # All variants are loaded; ``access`` is only the default for touch().
        self.codes: dict[str, GuestCode] = {a: touch_loop_code(a) for a in ACCESS_KINDS}
        self.code: GuestCode = self.codes[access]
        self.vm = system.create_vm(vm_type)
        self.sys_mem: HostMemory | None = None
        try:
            self.vcpu = self.vm.create_vcpu(0)
            pt_pages = page_tables_needed(max_window_span, PAGE_4K) + 8
            sys_size = _round_up(PT_OFFSET + pt_pages * PAGE_4K, PAGE_2M)
            self.sys_mem = HostMemory(sys_size, thp=False)
            self.sys_mem.prefault()
            self.vm.add_memslot(SYS_SLOT, SYS_GPA, self.sys_mem, own=False)
            self.pt = IdentityPageTables(SYS_GPA + PT_OFFSET, pt_pages)
            self.pt.map(SYS_GPA, SYS_GPA + sys_size, PAGE_4K)
            for i, a in enumerate(ACCESS_KINDS):
                self.sys_mem.write(CODE_OFFSET + i * self.CODE_STRIDE, self.codes[a].code)
            self.native: NativeMsrProbe | None = None
            self._want_native = native
            self._finalized = False
        except BaseException:
            self.close()
            raise

    def code_gpa(self, access: str) -> int:
        return SYS_GPA + CODE_OFFSET + ACCESS_KINDS.index(access) * self.CODE_STRIDE

    def add_window(self, slot: int, gpa: int, memory: HostMemory, *, guest_page_size: int = PAGE_2M,
                   flags: int = 0, size: int | None = None,
                   gmem: GuestMemfd | None = None) -> Memslot:
        ms = self.vm.add_memslot(slot, gpa, memory, flags=flags, size=size, gmem=gmem)
        self.pt.map(gpa, gpa + ms.size, guest_page_size)
        if self._finalized:
            self.sys_mem.write(PT_OFFSET, self.pt.image())
        return ms

    def map_window(self, gpa: int, size: int, guest_page_size: int = PAGE_2M) -> None:
        """Identity-map a further guest range (e.g. where a window was moved to)."""
        self.pt.map(gpa, gpa + size, guest_page_size)
        if self._finalized:
            self.sys_mem.write(PT_OFFSET, self.pt.image())

    def finalize(self) -> None:
        self.sys_mem.write(PT_OFFSET, self.pt.image())
        self.vcpu.set_cpuid2(self.system.supported_cpuid())
        self.vcpu.setup_long_mode(self.pt.cr3)
        if self._want_native:
            self.native = self.vcpu.probe_native_execution()
        self._finalized = True

    def touch(self, start: int, count: int, stride: int = PAGE_4K,
              access: str | None = None) -> ExitInfo:
        """Run the *access* loop over ``count`` addresses from ``start`` by ``stride``
        (RIP/RDI/RCX/RDX/RSP set here); returns the HLT exit or raises GuestError."""
        if not self._finalized:
            self.finalize()
        access = access or self.access
        entry = self.code_gpa(access)
        self.vcpu.set_regs(u.kvm_regs(rip=entry, rdi=start, rcx=count,
                                      rdx=stride, rsp=SYS_GPA + STACK_TOP_OFFSET, rflags=0x2))
        hlt_rip = entry + self.codes[access].hlt_offset
        while True:
            ex = self.vcpu.run()
            if ex.reason == u.KVM_EXIT_INTR:
                continue
            # KVM reports RIP after the hlt instruction.
            if ex.reason != u.KVM_EXIT_HLT or ex.rip not in (hlt_rip, hlt_rip + 1):
                raise GuestError(ex, hlt_rip)
            return ex

    def stats(self) -> dict[str, int]:
        """VM stats merged with vCPU 0 stats (vCPU names prefixed ``vcpu.`` if they clash)."""
        out: dict = {k: v for k, v in self.vm.stats().items() if isinstance(v, int)}
        for k, v in self.vcpu.stats().items():
            if isinstance(v, int):
                out[k if k not in out else f"vcpu.{k}"] = v
        return out

    def close(self) -> None:
        self.vm.close()        # closes vCPU/VM fds first, then window memory
        if self.sys_mem is not None:
            self.sys_mem.close()

    def __enter__(self) -> "TouchGuest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# host facts
# --------------------------------------------------------------------------------------
def read_module_params(module: str = "kvm") -> dict[str, str]:
    """``/sys/module/<module>/parameters/*`` as name -> stripped text ({} if absent)."""
    d = f"/sys/module/{module}/parameters"
    out: dict[str, str] = {}
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for n in names:
        try:
            with open(os.path.join(d, n)) as f:
                out[n] = f.read().strip()
        except OSError:
            continue
    return out


def write_module_param(name: str, value: str, module: str = "kvm") -> str:
    """Write ``/sys/module/<module>/parameters/<name>`` (root); returns the old value."""
    path = f"/sys/module/{module}/parameters/{name}"
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write(value)
    return old


def kvm_vendor_modules() -> list[str]:
    """Loaded KVM vendor modules (kvm_intel, kvm_amd, kvm_pvm, ...)."""
    try:
        return sorted(m for m in os.listdir("/sys/module") if m.startswith("kvm_"))
    except OSError:
        return []


def hugetlb_free_pages(size_kb: int = 2048) -> int:
    try:
        with open(f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB/free_hugepages") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def fill_window(memory: HostMemory, access: str) -> None:
    """Prefault a window for *access*: ``ret`` bytes for exec, zeros otherwise."""
    memory.prefault(RET_OPCODE if access == "exec" else 0)
