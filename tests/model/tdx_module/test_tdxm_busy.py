"""Try-lock contention: a hook at the first scheduling point runs a second call (§2.3)."""

import pytest
from tdxm_helpers import M2, Td

from tdpsim.model import sched
from tdpsim.model.tdx_module import KEY_SEPT_TREE, STEPPING_EPF_THRESHOLD, TdxModule

BUSY_SEPT = 0x8000020000000092
BUSY_RCX = 0x8000020000000001
BUSY_RDX = 0x8000020000000002
BUSY_EPOCH = 0x80000200000000A9


def contend(m: TdxModule, second):
    """Install a hook that runs ``second()`` once, at the next scheduling point."""
    out = []

    def hook(kind, key, write):
        if not out:
            out.append(None)
            out[0] = second()

    m.sched.hook = hook
    return out


def finish(t: Td, out):
    t.m.sched.hook = None
    assert t.m.violations() == []
    return out[0]


def test_block_holds_tree_exclusive_aug_busy(td):
    td.aug4k(0)
    td.tables(M2, 1)
    out = contend(td.m, lambda: td.m.tdh_mem_page_aug(M2, 0, td.pfns.page()))
    assert td.m.tdh_mem_range_block(0, 0).ok
    r = finish(td, out)
    assert r.status == BUSY_SEPT == 0x8000020000000092


def test_aug_vs_aug_same_entry_busy_rcx_and_tdhp(td):
    td.tables(0, 1)
    out = contend(td.m, lambda: td.m.tdh_mem_page_aug(0, 0, td.pfns.page()))
    assert td.m.tdh_mem_page_aug(0, 0, td.pfns.page()).ok
    r = finish(td, out)
    assert r.status == BUSY_RCX and r.rdx == 0  # FREE at level 0 (sampled before the lock)


def test_aug_vs_aug_other_entry_shared_tree_ok(td):
    td.tables(0, 1)
    out = contend(td.m, lambda: td.m.tdh_mem_page_aug(0x1000, 0, td.pfns.page()))
    assert td.m.tdh_mem_page_aug(0, 0, td.pfns.page()).ok
    assert finish(td, out).ok


def test_vp_enter_holds_epoch_lock_track_busy(td):
    out = contend(td.m, td.m.tdh_mem_track)
    assert td.m.tdh_vp_enter(0).ok
    assert finish(td, out).status == BUSY_EPOCH == 0x80000200000000A9


def test_track_holds_epoch_exclusive_vp_enter_busy(td):
    out = contend(td.m, lambda: td.m.tdh_vp_enter(1))
    assert td.m.tdh_mem_track().ok
    assert finish(td, out).status == BUSY_EPOCH
    assert not td.m.vcpus[1].in_guest


def test_finalize_holds_tdr_exclusive(td_build):
    t = td_build
    t.tables(0, 1)
    out = contend(t.m, lambda: t.m.tdh_mem_page_aug(0, 0, t.pfns.page()))
    assert t.m.tdh_mr_finalize().ok
    assert finish(t, out).status == BUSY_RDX


def test_page_add_holds_tdr_exclusive(td_build):
    t = td_build
    t.tables(0, 1)
    out = contend(t.m, lambda: t.m.tdh_mem_sept_add(M2, 1, t.pfns.page()))
    assert t.m.tdh_mem_page_add(0, t.pfns.page()).ok
    assert finish(t, out).status == BUSY_RDX


def test_accept_holds_entry_lock_block_busy(td):
    td.aug4k(0)
    td.enter(0)
    out = contend(td.m, lambda: td.m.tdh_mem_range_block(0, 0))
    assert td.m.tdg_mem_page_accept(0, 0, 0).status == 0
    r = finish(td, out)
    assert r.status == BUSY_RCX
    # the host set TDHP: the guest's next ACCEPT on that entry backs off
    assert td.m.tdg_mem_page_accept(0, 0, 0).status == BUSY_RCX
    assert td.m.tdh_mem_range_block(0, 0).ok  # host retry wins and clears TDHP


def test_host_remove_holds_entry_lock_accept_busy(td):
    td.aug4k(0)
    td.block_track(0, 0)
    td.enter(0)
    out = contend(td.m, lambda: td.m.tdg_mem_page_accept(0, 0, 0))
    assert td.m.tdh_mem_page_remove(0, 0).ok
    assert finish(td, out).status == BUSY_RCX


def test_zero_step_enter_holds_tree_exclusive():
    t = Td()
    t.tables(0, 1)
    for _ in range(STEPPING_EPF_THRESHOLD):
        t.enter(0)
        t.m.guest_access(0, 0x1000, rip=7)
    out = contend(t.m, lambda: t.m.tdh_mem_page_aug(0x2000, 0, t.pfns.page()))
    r = t.m.tdh_vp_enter(0)
    assert r.exit is not None
    assert finish(t, out).status == BUSY_SEPT


@pytest.mark.parametrize("version,expected", [("1.5", BUSY_RCX), ("2.0", BUSY_SEPT)])
def test_promote_lock_modes(version, expected):
    t = Td(version=version, runnable=False)
    t.tables(M2, 1)
    hp = t.pfns.huge()
    for i in range(512):
        assert t.m.tdh_mem_page_aug(M2 + i * 4096, 0, hp + i).ok
    t.tables(0, 1)
    # 1.5: tree shared + child entry locks -> REMOVE of a child hits the entry lock.
    # 2.0: tree exclusive -> the REMOVE fails on the tree lock.
    out = contend(t.m, lambda: t.m.tdh_mem_page_remove(M2 + 4096, 0))
    assert t.m.tdh_mem_page_promote(M2, 1).ok
    assert finish(t, out).status == expected


def test_one_point_per_call_and_keys(td):
    seen = []
    td.m.sched.hook = lambda kind, key, write: seen.append((kind, key, write))
    td.m.tdh_mem_sept_add(0, 3, td.pfns.page())
    td.m.tdh_mem_sept_add(0, 1, td.pfns.page())  # fails (walk), still one point
    td.m.tdh_mem_track()
    td.m.tdh_vp_enter(0)
    td.m.tdg_mem_page_accept(0, 0, 0)
    assert [k for k, _, _ in seen] == [sched.SEAMCALL] * 4 + [sched.TDCALL]
    assert seen[0][1] == KEY_SEPT_TREE and seen[2][1] == ("tdx", "epoch")


def test_fine_grained_keys():
    m = TdxModule(fine_grained_keys=True, op_state=2)
    seen = []
    m.sched.hook = lambda kind, key, write: seen.append(key)
    m.tdh_mem_sept_add(1 << 39, 3, 77)
    m.tdh_mem_range_block(1 << 39, 3)
    assert seen == [("sept", 3, 1 << 27), KEY_SEPT_TREE]


def test_sequential_runs_never_contend(td):
    td.aug4k(0)
    td.enter(0)
    td.m.tdg_mem_page_accept(0, 0, 0)
    td.m.td_exit(0)
    td.block_track(0, 0)
    assert td.m.tdh_mem_page_remove(0, 0).ok
    assert not any("BUSY" in name for (_, name) in td.m.results)
