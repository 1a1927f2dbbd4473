"""The hand-assembled touch loop and the identity page-table builder (no KVM needed)."""

import pytest

from tdpsim.kvmcheck.guest import (PAGE_1G, PAGE_2M, PAGE_4K, PTE_PS, PTE_US,
                                   IdentityPageTables, touch_loop_code)


def test_write_loop_bytes():
    c = touch_loop_code("write")
    assert c.code == bytes.fromhex(
        "51" "59" "4885c9" "740b"        # push rcx; pop rcx; test rcx,rcx; jz done
        "c60701" "4801d7" "48ffc9" "75f5"  # mov byte [rdi],1; add rdi,rdx; dec rcx; jnz loop
        "f4" "ebfd")                      # hlt; jmp done
    assert c.code[c.hlt_offset] == 0xF4


@pytest.mark.parametrize("access,insn", [("read", "8a07"), ("exec", "ffd7")])
def test_other_variants(access, insn):
    c = touch_loop_code(access)
    assert c.code == bytes.fromhex("51594885c9740a" + insn + "4801d748ffc975f6f4ebfd")


@pytest.mark.parametrize("access", ["write", "read", "exec"])
def test_branch_targets(access):
    c = touch_loop_code(access)
    offs = {mn: off for off, _, mn in c.listing}
    enc = {mn: e for _, e, mn in c.listing}
    loop = offs["jz done"] + 2
    assert offs["jz done"] + 2 + enc["jz done"][1] == c.hlt_offset
    assert offs["jnz loop"] + 2 + (enc["jnz loop"][1] - 256) == loop
    assert offs["jmp done"] + 2 + (enc["jmp done"][1] - 256) == c.hlt_offset


def test_bad_access():
    with pytest.raises(ValueError):
        touch_loop_code("fetch")


def test_identity_tables_2m_and_4k():
    pt = IdentityPageTables(0x3000, 64)
    pt.map(0, 2 << 20, PAGE_4K)
    pt.map((1 << 30) + 4096, (1 << 30) + (16 << 20) + 4096, PAGE_2M)
    assert pt.cr3 == 0x3000
    assert pt.translate(0x1234) == (0x1234, PAGE_4K)
    assert pt.translate((1 << 30) + 0x123456) == ((1 << 30) + 0x123456, PAGE_2M)
    # rounded out to 2 MiB: 9 PDEs starting at 1 GiB
    assert pt.translate((1 << 30) + (17 << 20) + 5) == ((1 << 30) + (17 << 20) + 5, PAGE_2M)
    assert pt.translate((1 << 30) + (18 << 20)) is None
    assert pt.translate(3 << 30) is None
    img = pt.image()
    assert len(img) == pt.size and pt.size % PAGE_4K == 0
    pml4e = int.from_bytes(img[0:8], "little")
    assert pml4e & 1 and pml4e & PTE_US and not pml4e & PTE_PS


def test_identity_tables_1g_and_errors():
    pt = IdentityPageTables(0x3000, 8, user=False)
    pt.map(1 << 30, 2 << 30, PAGE_1G)
    assert pt.translate((1 << 30) + 77) == ((1 << 30) + 77, PAGE_1G)
    with pytest.raises(ValueError):
        pt.map(1 << 30, (1 << 30) + 4096, PAGE_4K)     # already a 1G page
    with pytest.raises(ValueError):
        IdentityPageTables(0x3000, 2).map(0, 4 << 20, PAGE_4K)   # area too small
    with pytest.raises(ValueError):
        IdentityPageTables(0x3001, 4)
