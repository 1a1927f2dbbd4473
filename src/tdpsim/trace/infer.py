"""Which kernel wrote a trace: the generation (a ``KernelProfile``) and the vendor SPTE
format, inferred from the values the trace itself carries.

Evidence, read from the first lines of the trace (``MAX_SCAN_LINES``):

* ``SHADOW_NONPRESENT_VALUE``: the non-present side of an install or a zap in
  ``kvm_tdp_mmu_spte_changed`` is 0 before v6.10 and 0x8000000000000000 from v6.10;
* ``FROZEN_SPTE``: a freeze prints ``new_spte 5a0`` before v6.10, ``80000000000005a0`` after;
* ``fast_page_fault`` error codes with bits above 31 (``P|W|U|0x100000000``) need the u64
  tracepoint field (not in 6.1);
* a TD (a mirror root in a raw role word) needs ``KVM_X86_TDX_VM`` (v6.16+);
* the vendor, from a present table SPTE: NPT sets A at bit 5 (``…827``), EPT at bit 8
  (``…907``) or marks A/D disabled (bit 52); EPT host/MMU-writable bits are 57/58;
* the root level, from the level of the first root page (``kvm_mmu_get_page … l5``).

Profiles the trace cannot tell apart (6.12 and 6.18+hp-v3 trace the same values on a
non-TD host) are reported as such; the default profile is used among them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..model.profile import DEFAULT_PROFILE, PROFILES, KernelProfile
from ..model.spte import (
    EPT_SPTE_HOST_WRITABLE,
    EPT_SPTE_MMU_WRITABLE,
    PG_LEVEL_4K,
    PT_ACCESSED_MASK,
    PT_PAGE_SIZE_MASK,
    SPTE_MMU_PRESENT_MASK,
    SPTE_TDP_AD_DISABLED,
    VMX_EPT_ACCESS_BIT,
)
from .parser import TraceParser
from .records import FastPageFault, KvmMmuGetPage, KvmTdpMmuSpteChanged

__all__ = ["Evidence", "KernelInference", "infer_kernel", "MAX_SCAN_LINES"]

MAX_SCAN_LINES = 200_000

_BIT63 = 1 << 63
_NONPRESENT = {0: "0 (before v6.10)", _BIT63: "0x8000000000000000 (v6.10+)"}
_FROZEN = {0x5A0: "0x5a0 (before v6.10)", _BIT63 | 0x5A0: "0x80000000000005a0 (v6.10+)"}


@dataclass(frozen=True)
class Evidence:
    """One trace line that decided something."""

    lineno: int
    what: str

    def __str__(self) -> str:
        return f"line {self.lineno}: {self.what}"


@dataclass
class KernelInference:
    """The outcome: ``profile``/``vendor``/``root_level`` are None when the trace did not
    say; ``candidates`` are the profiles consistent with everything seen."""

    profile: KernelProfile | None = None
    vendor: str | None = None
    root_level: int | None = None
    candidates: tuple[str, ...] = ()
    evidence: list[Evidence] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    lines: int = 0
    spte_changes: int = 0

    def describe(self) -> str:
        """One paragraph a user can check against the trace."""
        why = "; ".join(str(e) for e in self.evidence) or "no deciding line"
        if self.profile is None:
            reason = ("; ".join(self.conflicts) if self.conflicts else
                      f"scanned {self.lines} lines, {self.spte_changes} "
                      "kvm_tdp_mmu_spte_changed, none with a non-present value (0 or "
                      "0x8000000000000000) on an install or zap, nor a freeze (5a0 or "
                      "80000000000005a0)")
            head = f"kernel generation not inferred ({reason})"
        else:
            head = f"kernel {self.profile.name} inferred"
            if len(self.candidates) > 1:
                head += (f" (the trace cannot tell {' / '.join(self.candidates)} apart; "
                         f"using {self.profile.name})")
        vendor = ("vendor not inferred (no present table SPTE seen)" if self.vendor is None
                  else f"vendor {self.vendor} ({'NPT' if self.vendor == 'amd' else 'EPT'})")
        level = "" if self.root_level is None else f", {self.root_level}-level root"
        return f"{head}; {vendor}{level} — evidence: {why}"

    def to_dict(self) -> dict[str, object]:
        return {"profile": None if self.profile is None else self.profile.name,
                "vendor": self.vendor, "root_level": self.root_level,
                "candidates": list(self.candidates),
                "evidence": [{"line": e.lineno, "what": e.what} for e in self.evidence],
                "conflicts": list(self.conflicts), "lines_scanned": self.lines}


class _Scan:
    def __init__(self) -> None:
        self.out = KernelInference()
        self.nonpresent: int | None = None
        self.frozen: int | None = None
        self.u64_error_code = False
        self.td = False

    def decided(self) -> bool:
        return (self.nonpresent is not None or self.frozen is not None) \
            and self.out.vendor is not None and self.out.root_level is not None

    def note(self, ln: int, what: str) -> None:
        self.out.evidence.append(Evidence(ln, what))

    def special(self, kind: str, table: dict[int, str], value: int, ln: int, ctx: str) -> None:
        have = getattr(self, kind)
        if have is None:
            setattr(self, kind, value)
            name = "SHADOW_NONPRESENT_VALUE" if kind == "nonpresent" else "FROZEN_SPTE"
            self.note(ln, f"{ctx} → {name} = {table[value]}")
        elif have != value:
            self.out.conflicts.append(f"line {ln}: {ctx} contradicts the value seen before "
                                      f"({table[have]} vs {table[value]})")

    def changed(self, rec: KvmTdpMmuSpteChanged) -> None:
        self.out.spte_changes += 1
        old, new, ln = rec.old_spte, rec.new_spte, rec.lineno
        if new in _FROZEN:
            self.special("frozen", _FROZEN, new, ln, f"a freeze (new_spte {new:x})")
            return
        old_p, new_p = bool(old & SPTE_MMU_PRESENT_MASK), bool(new & SPTE_MMU_PRESENT_MASK)
        if new_p and not old_p and old in _NONPRESENT:
            self.special("nonpresent", _NONPRESENT, old, ln, f"an install over old_spte {old:x}")
        elif old_p and not new_p and new in _NONPRESENT:
            self.special("nonpresent", _NONPRESENT, new, ln, f"a zap to new_spte {new:x}")
        if self.out.vendor is None and new_p:
            self.vendor(new, rec.level, ln)

    def vendor(self, spte: int, level: int, ln: int) -> None:
        table = level > PG_LEVEL_4K and not spte & PT_PAGE_SIZE_MASK
        if table and spte & PT_ACCESSED_MASK:
            self.out.vendor = "amd"
            self.note(ln, f"table SPTE {spte:x} has A at bit 5 (NPT)")
        elif table and spte & (VMX_EPT_ACCESS_BIT | SPTE_TDP_AD_DISABLED):
            self.out.vendor = "intel"
            self.note(ln, f"table SPTE {spte:x} has A at bit 8 or A/D disabled (EPT)")
        elif spte & (EPT_SPTE_HOST_WRITABLE | EPT_SPTE_MMU_WRITABLE):
            self.out.vendor = "intel"
            self.note(ln, f"SPTE {spte:x} has host/MMU-writable at bits 57/58 (EPT)")

    def get_page(self, rec: KvmMmuGetPage) -> None:
        if self.out.root_level is None and rec.gfn in (0, None) and rec.level >= 4:
            self.out.root_level = rec.level
            self.note(rec.lineno, f"root page at level {rec.level}")
        if rec.style == "raw" and rec.is_mirror and not self.td:
            self.td = True
            self.note(rec.lineno, "a mirror root (TD) → KVM_X86_TDX_VM")

    def fast_pf(self, rec: FastPageFault) -> None:
        if rec.error_code >> 32 and not self.u64_error_code:
            self.u64_error_code = True
            self.note(rec.lineno, f"fast_page_fault error_code {rec.error_code:#x} has bits "
                                  "above 31 (u64 tracepoint field)")

    def finish(self) -> KernelInference:
        out = self.out
        if self.nonpresent is None and self.frozen is None:
            return out
        cands = [p for p in PROFILES.values()
                 if (self.nonpresent is None or p.SHADOW_NONPRESENT_VALUE == self.nonpresent)
                 and (self.frozen is None or p.FROZEN_SPTE == self.frozen)
                 and (not self.u64_error_code or p.fast_page_fault_error_code_bits == 64)
                 and (not self.td or p.tdx_vm_type)]
        out.candidates = tuple(p.name for p in cands)
        if not cands:
            out.conflicts.append("no kernel profile has all of these values")
        elif not out.conflicts:
            out.profile = DEFAULT_PROFILE if DEFAULT_PROFILE in cands else cands[-1]
        return out


def infer_kernel(lines: Iterable[str], *, max_lines: int = MAX_SCAN_LINES,
                 filename: str = "<trace>", stop_when_decided: bool = True) -> KernelInference:
    """Scan up to ``max_lines`` lines, by default stopping once the generation, the
    vendor and the root level are known (later contradictions then go unseen)."""
    scan = _Scan()
    handlers = {KvmTdpMmuSpteChanged: scan.changed, KvmMmuGetPage: scan.get_page,
                FastPageFault: scan.fast_pf}
    count = [0]

    def head() -> Iterator[str]:
        for line in lines:
            if count[0] >= max_lines:
                return
            count[0] += 1
            yield line

    for rec in TraceParser(head(), skip_bad=True, filename=filename):
        h = handlers.get(rec.__class__)
        if h is not None:
            h(rec)  # type: ignore[operator]
            if stop_when_decided and scan.decided():
                break
    scan.out.lines = count[0]
    return scan.finish()
