"""The guest side of kvmcheck: a hand-assembled touch loop and identity page tables.

Everything here is pure (bytes in, bytes out) so it can be unit-tested without /dev/kvm.

The guest runs in 64-bit long mode at CPL0 with flat segments.  The host sets, per run:

* ``RIP`` = the code's guest-physical (= guest-virtual, identity mapped) address,
* ``RDI`` = first address to touch, ``RCX`` = number of touches, ``RDX`` = stride in bytes,
* ``RSP`` = top of a stack page (used by ``push``/``pop`` and by ``call`` in the exec variant).

and the loop touches ``RDI, RDI+RDX, ...`` ``RCX`` times, then executes ``hlt`` which KVM
reports to userspace as ``KVM_EXIT_HLT`` (no in-kernel irqchip is created).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAGE_4K = 4096
PAGE_2M = 2 << 20
PAGE_1G = 1 << 30

ACCESS_KINDS = ("write", "read", "exec")

#: byte used to fill the window for the ``exec`` variant: ``ret`` (C3).
RET_OPCODE = 0xC3

# One access instruction per variant.  Each is a complete instruction encoding.
_ACCESS_INSN = {
    # C6 /0 ib: mov byte ptr [rdi], imm8     ModRM 0x07 = mod 00, reg /0, rm 111 (rdi)
    "write": (bytes([0xC6, 0x07, 0x01]), "mov byte ptr [rdi], 1"),
    # 8A /r: mov r8, r/m8                    ModRM 0x07 = mod 00, reg 000 (al), rm 111 (rdi)
    "read": (bytes([0x8A, 0x07]), "mov al, byte ptr [rdi]"),
    # FF /2: call r/m64                      ModRM 0xD7 = mod 11, reg /2, rm 111 (rdi)
    "exec": (bytes([0xFF, 0xD7]), "call rdi"),
}


@dataclass(frozen=True)
class GuestCode:
    """Assembled touch-loop code."""

    access: str
    code: bytes
    listing: tuple[tuple[int, bytes, str], ...]   # (offset, encoding, mnemonic)
    hlt_offset: int

    def __len__(self) -> int:
        return len(self.code)


def touch_loop_code(access: str = "write") -> GuestCode:
    """Assemble the touch loop for *access* ("write", "read" or "exec").

    Listing (``A`` is the access instruction, 3 bytes for write, 2 for read/exec)::

        00: 51            push rcx               ; touch the stack page every run
        01: 59            pop rcx
        02: 48 85 C9      test rcx, rcx          ; REX.W 85 /r, ModRM 11 001 001
        05: 74 xx         jz done                ; nothing to touch
        07: loop: A       <access [rdi]>
            48 01 D7      add rdi, rdx           ; REX.W 01 /r, ModRM 11 010(rdx) 111(rdi)
            48 FF C9      dec rcx                ; REX.W FF /1, ModRM 11 001 111->rcx
            75 xx         jnz loop
        done: F4          hlt                    ; -> KVM_EXIT_HLT
            EB FD         jmp done               ; hlt again if ever resumed
    """
    if access not in _ACCESS_INSN:
        raise ValueError(f"access must be one of {ACCESS_KINDS}, not {access!r}")
    acc, acc_mn = _ACCESS_INSN[access]
    add = bytes([0x48, 0x01, 0xD7])
    dec = bytes([0x48, 0xFF, 0xC9])
    body_len = len(acc) + len(add) + len(dec) + 2          # + jnz rel8
    listing: list[tuple[bytes, str]] = [
        (bytes([0x51]), "push rcx"),
        (bytes([0x59]), "pop rcx"),
        (bytes([0x48, 0x85, 0xC9]), "test rcx, rcx"),
        (bytes([0x74, body_len]), "jz done"),
        (acc, acc_mn),
        (add, "add rdi, rdx"),
        (dec, "dec rcx"),
        (bytes([0x75, (-body_len) & 0xFF]), "jnz loop"),
        (bytes([0xF4]), "hlt"),
        (bytes([0xEB, 0xFD]), "jmp done"),
    ]
    out = []
    off = 0
    hlt_offset = -1
    for enc, mn in listing:
        if mn == "hlt":
            hlt_offset = off
        out.append((off, enc, mn))
        off += len(enc)
    return GuestCode(access=access, code=b"".join(e for _, e, _ in out),
                     listing=tuple(out), hlt_offset=hlt_offset)


# --------------------------------------------------------------------------------------
# Identity-mapped 4-level page tables
# --------------------------------------------------------------------------------------
PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7

#: non-leaf entries: present, writable, accessed (so the CPU / KVM need not set A).
_TABLE_FLAGS = PTE_P | PTE_RW | PTE_A
#: leaf entries: present, writable, accessed, dirty (pre-set so no A/D write-back).
_LEAF_FLAGS = PTE_P | PTE_RW | PTE_A | PTE_D


@dataclass
class IdentityPageTables:
    """Builds x86-64 4-level identity page tables into a contiguous area of guest memory.

    ``base_gpa`` is where the area starts (4 KiB aligned) and ``max_pages`` bounds it.
    ``map(start, end, page_size)`` identity-maps ``[start, end)`` rounded out to
    *page_size*.  ``image()`` returns the bytes to copy to ``base_gpa``; ``cr3`` is the
    PML4's address.

    ``user`` sets the U/S bit in every entry.  It is on by default because the PVM-based
    KVM measured by kvmcheck triple-faults a natively executing guest on its first
    instruction fetch when U/S is clear (the guest's CPL0 runs in hardware user mode
    there); in emulated mode either setting works.
    """

    base_gpa: int
    max_pages: int
    user: bool = True
    _pages: list[bytearray] = field(default_factory=list)
    _tables: dict[tuple[int, int], int] = field(default_factory=dict)   # (level, index-prefix) -> page no

    def __post_init__(self) -> None:
        if self.base_gpa % PAGE_4K:
            raise ValueError("page-table area must be 4 KiB aligned")
        self._alloc((4, 0))                     # PML4 is page 0

    @property
    def _table_flags(self) -> int:
        return _TABLE_FLAGS | (PTE_US if self.user else 0)

    @property
    def _leaf_flags(self) -> int:
        return _LEAF_FLAGS | (PTE_US if self.user else 0)

    @property
    def cr3(self) -> int:
        return self.base_gpa

    @property
    def size(self) -> int:
        return len(self._pages) * PAGE_4K

    def _alloc(self, key: tuple[int, int]) -> int:
        if len(self._pages) >= self.max_pages:
            raise ValueError(f"page-table area full ({self.max_pages} pages)")
        self._pages.append(bytearray(PAGE_4K))
        self._tables[key] = len(self._pages) - 1
        return len(self._pages) - 1

    def _entry_get(self, page: int, idx: int) -> int:
        return int.from_bytes(self._pages[page][idx * 8: idx * 8 + 8], "little")

    def _entry_set(self, page: int, idx: int, val: int) -> None:
        self._pages[page][idx * 8: idx * 8 + 8] = val.to_bytes(8, "little")

    def _table_for(self, level: int, va: int) -> int:
        """Page number of the level-*level* table (4=PML4 .. 1=PT) covering *va*."""
        page = self._tables[(4, 0)]
        for lvl in range(4, level, -1):
            shift = 12 + 9 * (lvl - 1)
            idx = (va >> shift) & 0x1FF
            key = (lvl - 1, va >> (shift))          # child table id: unique per covered range
            ent = self._entry_get(page, idx)
            if ent & PTE_P:
                if ent & PTE_PS:
                    raise ValueError(f"{va:#x} already mapped by a large page at level {lvl}")
                page = (ent & 0x000F_FFFF_FFFF_F000) - self.base_gpa
                page //= PAGE_4K
            else:
                child = self._alloc(key)
                self._entry_set(page, idx, (self.base_gpa + child * PAGE_4K) | self._table_flags)
                page = child
        return page

    def map(self, start: int, end: int, page_size: int = PAGE_4K) -> None:
        """Identity-map ``[start, end)`` (rounded out to *page_size*) with *page_size* pages."""
        levels = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}
        if page_size not in levels:
            raise ValueError(f"unsupported guest page size {page_size}")
        if end > (1 << 47):
            raise ValueError("only lower-half canonical addresses are supported")
        level = levels[page_size]
        va = start - start % page_size
        while va < end:
            table = self._table_for(level, va)
            idx = (va >> (12 + 9 * (level - 1))) & 0x1FF
            flags = self._leaf_flags | (PTE_PS if level > 1 else 0)
            old = self._entry_get(table, idx)
            if old & PTE_P and (old & 0x000F_FFFF_FFFF_F000) != va:
                raise ValueError(f"{va:#x} already mapped differently")
            self._entry_set(table, idx, va | flags)
            va += page_size

    def image(self) -> bytes:
        return b"".join(bytes(p) for p in self._pages)

    def translate(self, va: int) -> tuple[int, int] | None:
        """Walk the tables like the CPU: (physical address, page size) or None if unmapped."""
        page = self._tables[(4, 0)]
        for lvl in (4, 3, 2, 1):
            shift = 12 + 9 * (lvl - 1)
            ent = self._entry_get(page, (va >> shift) & 0x1FF)
            if not ent & PTE_P:
                return None
            if lvl == 1 or ent & PTE_PS:
                size = 1 << shift
                return (ent & 0x000F_FFFF_FFFF_F000 & ~(size - 1)) | (va & (size - 1)), size
            page = ((ent & 0x000F_FFFF_FFFF_F000) - self.base_gpa) // PAGE_4K
        return None


def page_tables_needed(span: int, page_size: int) -> int:
    """Upper bound on table pages to map a *span*-byte window with *page_size* pages."""
    pts = 0 if page_size != PAGE_4K else span // PAGE_2M + 2
    pds = span // PAGE_1G + 2
    return 1 + 2 + pds + pts + 4     # PML4, PDPTs, PDs, PTs, slack
