"""Hypothesis strategies producing valid records of every supported tracepoint."""

from __future__ import annotations

from hypothesis import strategies as st

from tdpsim.trace import (
    ROLE_KERNEL_MASK,
    ROLE_PLUGIN_MASK,
    VMX_EXIT_REASONS,
    CheckMmioSpte,
    FastPageFault,
    HandleMmioPageFault,
    KvmEntry,
    KvmExit,
    KvmMmuGetPage,
    KvmMmuPrepareZapPage,
    KvmMmuSetSpte,
    KvmMmuSplitHugePage,
    KvmMmuSpteRequested,
    KvmMmuSyncPage,
    KvmMmuUnsyncPage,
    KvmMmuZapAllFast,
    KvmPageFault,
    KvmTdpMmuSpteChanged,
    MarkMmioSpte,
)

U8 = st.integers(0, 0xFF)
U32 = st.integers(0, 0xFFFF_FFFF)
U64 = st.integers(0, (1 << 64) - 1)
S32 = st.integers(-(1 << 31), (1 << 31) - 1)
HEXISH = st.one_of(U64, st.integers(0, 0xFFFFF))  # small values too

_COMM_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 /_.-<>~:#[]()"
comm = st.text(_COMM_ALPHABET, min_size=1, max_size=15).filter(lambda s: s == s.strip())
timestamp = st.one_of(
    st.builds(lambda s, u: f"{s}.{u:06d}", st.integers(0, 10**7), st.integers(0, 999999)),
    st.builds(lambda s, u: f"{s}.{u:09d}", st.integers(0, 10**7), st.integers(0, 10**9 - 1)),
    st.integers(0, 10**15).map(str),
)
flags = st.one_of(st.none(), st.text(".dDNnhHsbXz0123456789", min_size=4, max_size=5))
tgid = st.one_of(st.none(), st.just(-1), st.integers(0, 4_000_000))


def header():
    return st.fixed_dictionaries(
        dict(comm=comm, pid=st.integers(0, 4_000_000), cpu=st.integers(0, 4095),
             timestamp=timestamp, tgid=tgid, flags=flags)
    )


def rec(cls, *args, **kw):
    """st.builds with a random header."""
    return st.builds(lambda h, *a, **k: cls(*a, **k, **h), header(), *args, **kw)


_reason_names = st.sampled_from(sorted(VMX_EXIT_REASONS))
kernel_reason = st.one_of(
    _reason_names,
    _reason_names.map(lambda n: n + " FAILED_VMENTRY"),
    st.integers(0, 0xFFFF).map(lambda v: f"0x{v:x}"),
)
plugin_reason = st.one_of(_reason_names, st.integers(0, 1 << 32).map(lambda v: f"UNKNOWN ({v})"))
rip_sym = st.one_of(st.none(), st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}(\+0x[0-9a-f]{1,4})?\Z"))


def _set_spte(h, gfn, spte, level, sptep, r, x, u):
    return KvmMmuSetSpte(gfn, spte, level, sptep, r, bool(spte & 2), x, u, **h)


def _fast_pf(h, vcpu, gpa, ec, sptep, old, new, outcome):
    return FastPageFault(vcpu, gpa, ec, sptep, old, new, outcome == 1, outcome == 2, **h)


def _page(cls, style, with_created):
    mask = {"kernel": ROLE_KERNEL_MASK, "plugin": ROLE_PLUGIN_MASK, "raw": 0xFFFF_FFFF}[style]

    def make(h, gen, gfn, role, root, unsync, created):
        if style == "plugin":
            gen = None
            if not with_created:
                gfn = None
        kw = dict(style=style, **h)
        if with_created:
            kw["created"] = created
        return cls(gen, gfn, role & mask, root, unsync, **kw)

    return st.builds(make, header(), U8, U64, U32, U32, st.booleans(), st.booleans())


def _page_fault(h, style, vcpu, rip, addr, ec):
    if style == "v1":
        return KvmPageFault(None, None, addr, ec & 0xFFFF_FFFF, style="v1", **h)
    if style == "v2":
        return KvmPageFault(vcpu, rip, addr, ec & 0xFFFF_FFFF, style="v2", **h)
    return KvmPageFault(vcpu, rip, addr, ec, **h)


records = st.one_of(
    st.builds(_page_fault, header(), st.sampled_from(["kernel", "v2", "v1"]), U32, U64, U64, U64),
    rec(KvmEntry, U32, U64, immediate_exit=st.booleans()),
    rec(KvmEntry, U32, U64, rip_sym=rip_sym, style=st.just("plugin")),
    rec(KvmExit, U32, kernel_reason, U64, U64, U64, U32, U32),
    rec(KvmExit, st.none(), plugin_reason, U64, HEXISH, HEXISH, st.none(), st.none(),
        rip_sym=rip_sym.filter(lambda s: s != "info"), style=st.just("plugin")),
    rec(KvmMmuSpteRequested, U64, U64, U8),
    st.builds(_set_spte, header(), U64, HEXISH, U8, U64, st.booleans(), st.booleans(),
              st.sampled_from([-1, 0, 1])),
    rec(KvmTdpMmuSpteChanged, U8, U64, U8, HEXISH, HEXISH),
    rec(KvmMmuSplitHugePage, U64, U64, S32, S32),
    *[_page(c, s, c is KvmMmuGetPage)
      for c in (KvmMmuGetPage, KvmMmuPrepareZapPage, KvmMmuSyncPage, KvmMmuUnsyncPage)
      for s in ("kernel", "plugin", "raw")],
    st.builds(_fast_pf, header(), S32, U64, U32, U64, HEXISH, U64, st.sampled_from([0, 1, 2])),
    rec(MarkMmioSpte, U64, U64, U32, U32),
    rec(HandleMmioPageFault, U64, U64, U32),
    rec(CheckMmioSpte, U64, U32, st.one_of(U32, st.just(0))),
    rec(KvmMmuZapAllFast, U8, U32),
)
