"""Secure-EPT entries: state automata, compact S-EPT pages and the module's walk.

Mirrors ``include/auto_gen/sept_state_lookup.{c,h}`` and ``src/common/memory_handlers/
sept_manager.{c,h}`` (``secure_ept_walk``, ``sept_lock_acquire_host/guest``) of intel/tdx-module
1.5.01.

Simplifications:
- Only the core states FREE, NL_MAPPED, NL_BLOCKED, MAPPED, BLOCKED, PENDING, PENDING_BLOCKED.
- An entry is (7-bit state encoding, pfn, TDEL/TDHP flags, accept_counter); no A/D, memtype, L2.
- One ``SeptPage`` per 4K S-EPT page with three 512-slot arrays, never one object per entry.
- The "architectural entry" returned in RCX on errors is rebuilt from the state (RWX, WB memtype
  for leaves, IPAT, PS, D, TDEX/TDBW/TDB/TDP, HPA, SVE on FREE); software bits are dropped.
"""

from __future__ import annotations

from array import array
from typing import Final, Iterator, NamedTuple

# --- 7-bit state encodings (D, TDEX, TDBW, TDB, TDP, IPAT, PS) --------------------------------
FREE: Final = 0x0E
NL_MAPPED: Final = 0x00
NL_BLOCKED: Final = 0x08
MAPPED: Final = 0x60
BLOCKED: Final = 0x68
PENDING: Final = 0x70
PENDING_BLOCKED: Final = 0x78

STATE_NAMES = {
    FREE: "FREE", NL_MAPPED: "NL_MAPPED", NL_BLOCKED: "NL_BLOCKED", MAPPED: "MAPPED",
    BLOCKED: "BLOCKED", PENDING: "PENDING", PENDING_BLOCKED: "PENDING_BLOCKED",
}
# Architectural state codes reported in level_state bits 15:8 and in the EEQ.
ARCH_STATE = {
    FREE: 0, NL_MAPPED: 0x84, NL_BLOCKED: 0x81, MAPPED: 4, BLOCKED: 1, PENDING: 2,
    PENDING_BLOCKED: 3,
}

LEAF_STATES = frozenset({MAPPED, BLOCKED, PENDING, PENDING_BLOCKED})
NON_LEAF_STATES = frozenset({NL_MAPPED, NL_BLOCKED})
ANY_BLOCKED = frozenset({NL_BLOCKED, BLOCKED, PENDING_BLOCKED})
ANY_PENDING = frozenset({PENDING, PENDING_BLOCKED})
GUEST_ACCESSIBLE_LEAF = frozenset({MAPPED})
BLOCK_OF = {NL_MAPPED: NL_BLOCKED, MAPPED: BLOCKED, PENDING: PENDING_BLOCKED}
UNBLOCK_OF = {v: k for k, v in BLOCK_OF.items()}

# §1.2: which states may exist at which TDX level.
STATES_AT_LEVEL = {
    0: frozenset({FREE}) | LEAF_STATES,
    1: frozenset({FREE}) | LEAF_STATES | NON_LEAF_STATES,
    2: frozenset({FREE}) | LEAF_STATES | NON_LEAF_STATES,
    3: frozenset({FREE}) | NON_LEAF_STATES,
    4: frozenset({FREE}) | NON_LEAF_STATES,
}

ENTRIES: Final = 512
LOCK_TDEL: Final = 0x1  # entry bit 11: per-entry lock
LOCK_TDHP: Final = 0x2  # entry bit 52: host priority


def is_leaf(state: int) -> bool:
    """PS bit (encoding bit 6)."""
    return bool(state & 0x40)


def is_present(state: int) -> bool:
    """RWX != 0: only NL_MAPPED and MAPPED; every other state stops a walk."""
    return state == NL_MAPPED or state == MAPPED


def pages_at(level: int) -> int:
    """Number of 4K pages covered by an entry at ``level``."""
    return 1 << (9 * level)


def arch_entry(state: int, pfn: int, sept_ve_disable: bool = True) -> int:
    """Architectural 64-bit S-EPT entry for error details (RCX)."""
    v = 0x7 if is_present(state) else 0
    if is_leaf(state):
        v |= 6 << 3  # WB memtype
    v |= ((state >> 5) & 1) << 6  # IPAT
    v |= ((state >> 6) & 1) << 7  # PS
    v |= (state & 1) << 9  # D
    v |= ((state >> 1) & 1) << 53
    v |= ((state >> 2) & 1) << 54
    v |= ((state >> 3) & 1) << 55
    v |= ((state >> 4) & 1) << 56
    if state != FREE:
        v |= (pfn & ((1 << 40) - 1)) << 12
    if state == FREE or (state in ANY_PENDING and sept_ve_disable):
        v |= 1 << 63  # SVE
    return v


def level_state(level: int, state: int) -> int:
    """RDX detail: bits 2:0 level, 15:8 arch state, 17:16 VM index (always 0)."""
    return (level & 7) | (ARCH_STATE[state] << 8)


class SeptPage:
    """One 4K S-EPT page holding 512 entries at ``level`` (TDX level of the entries)."""

    __slots__ = ("level", "base_gfn", "pfn", "state", "pfns", "flags", "child", "acc", "used")

    def __init__(self, level: int, base_gfn: int, pfn: int) -> None:
        self.level = level
        self.base_gfn = base_gfn
        self.pfn = pfn
        self.state = bytearray([FREE]) * ENTRIES
        self.pfns = array("Q", bytes(8 * ENTRIES))
        self.flags = bytearray(ENTRIES)
        self.child: dict[int, SeptPage] = {}  # idx -> child page of a non-leaf entry
        self.acc: dict[int, int] = {}  # idx -> accept_counter of a 2M PENDING leaf
        self.used = 0  # number of non-FREE entries (SEPT.REMOVE needs 0)

    def index(self, gfn: int) -> int:
        return (gfn >> (9 * self.level)) & (ENTRIES - 1)

    def gfn_of(self, idx: int) -> int:
        return self.base_gfn + (idx << (9 * self.level))

    def set_state(self, idx: int, new: int) -> None:
        """Write a state, keeping the non-FREE count right."""
        old = self.state[idx]
        self.used += (new != FREE) - (old != FREE)
        self.state[idx] = new


class Walk(NamedTuple):
    """Result of ``secure_ept_walk``: the page/index where it stopped and the level reached."""

    page: SeptPage
    idx: int
    level: int

    @property
    def state(self) -> int:
        return self.page.state[self.idx]

    @property
    def pfn(self) -> int:
        return self.page.pfns[self.idx]


def walk(root: SeptPage, gfn: int, level: int) -> Walk:
    """Walk down to ``level``; stop early at any entry that is not NL_MAPPED (§0.2).

    The caller compares ``Walk.level`` with the requested level: a mismatch is
    TDX_EPT_WALK_FAILED.
    """
    page = root
    while True:
        idx = page.index(gfn)
        if page.level == level or page.state[idx] != NL_MAPPED:
            return Walk(page, idx, page.level)
        page = page.child[idx]


def iter_pages(root: SeptPage) -> Iterator[SeptPage]:
    """Every S-EPT page under (and including) ``root``, pre-order, deterministic."""
    stack = [root]
    while stack:
        page = stack.pop()
        yield page
        for idx in sorted(page.child, reverse=True):
            stack.append(page.child[idx])


class SeptEntryInfo(NamedTuple):
    gfn: int
    level: int
    state: int
    pfn: int


def iter_entries(root: SeptPage) -> Iterator[SeptEntryInfo]:
    """Every non-FREE entry (leaf and non-leaf).  Non-leaf pfn = child S-EPT page pfn."""
    for page in iter_pages(root):
        if not page.used:
            continue
        st = page.state
        for idx in range(ENTRIES):
            s = st[idx]
            if s != FREE:
                yield SeptEntryInfo(page.gfn_of(idx), page.level, s, page.pfns[idx])
