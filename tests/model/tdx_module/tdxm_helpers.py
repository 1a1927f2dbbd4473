"""Helpers for the TDX module emulator tests (unique name: test dirs have no __init__)."""

from __future__ import annotations

from tdpsim.model.tdx_module import OP_INITIALIZED, OP_RUNNABLE, TdxModule

M2 = 1 << 21
G1 = 1 << 30


class PfnAlloc:
    """Deterministic host-frame allocator: 4K S-EPT pages low, guest pages high."""

    def __init__(self) -> None:
        self.next4k = 0x1000
        self.next2m = 0x100000  # 2M-aligned (pfn multiple of 512)

    def page(self) -> int:
        self.next4k += 1
        return self.next4k

    def huge(self) -> int:
        self.next2m += 512
        return self.next2m


class Td:
    """A module plus an allocator and shortcuts used by the tests."""

    def __init__(self, runnable: bool = True, **kw) -> None:
        self.m = TdxModule(**kw)
        self.pfns = PfnAlloc()
        if runnable:
            assert self.m.tdh_mr_finalize().ok

    def tables(self, gpa: int, down_to: int = 1) -> None:
        """SEPT.ADD every missing non-leaf from the root down to ``down_to`` (TDX level)."""
        for level in range(self.m.pwl, down_to - 1, -1):
            ent = self.m.entry(gpa & ~((1 << (12 + 9 * level)) - 1), level)
            if ent is not None and ent[0] == 0x0E:
                r = self.m.tdh_mem_sept_add(gpa & ~((1 << (12 + 9 * level)) - 1), level,
                                            self.pfns.page())
                assert r.ok, r.name

    def aug4k(self, gpa: int) -> int:
        self.tables(gpa, 1)
        pfn = self.pfns.page()
        r = self.m.tdh_mem_page_aug(gpa, 0, pfn)
        assert r.ok, r.name
        return pfn

    def aug2m(self, gpa: int) -> int:
        self.tables(gpa, 2)
        pfn = self.pfns.huge()
        r = self.m.tdh_mem_page_aug(gpa, 1, pfn)
        assert r.ok, r.name
        return pfn

    def block_track(self, gpa: int, level: int) -> None:
        assert self.m.tdh_mem_range_block(gpa, level).ok
        assert self.m.tdh_mem_track().ok

    def enter(self, vcpu: int = 0) -> None:
        assert self.m.tdh_vp_enter(vcpu).ok


__all__ = ["G1", "M2", "OP_INITIALIZED", "OP_RUNNABLE", "PfnAlloc", "Td"]
