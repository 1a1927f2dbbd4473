"""Cost parameters: every value with its source, or marked ASSUMPTION.

Not a kernel file.  The model counts events exactly; this module says what each event is
assumed to cost, so estimated times are only as good as the values below — which is why
each carries its provenance.  Published figures come from the project's references
(``kvm-tdp-mmu.md`` §5.6, ``tdx-module.md`` §8); anything else is an ASSUMPTION chosen to be
plausible on a recent Xeon (Sapphire Rapids class) and is meant to be overridden with a
user parameter file (``load_params``), e.g.::

    name = "my-host"
    [values]
    exit_roundtrip_us = 1.2
    [seamcall_us]
    "MEM.PAGE.AUG" = 1.8
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from tdpsim.userfile import NotTextError, read_user_text, validation_message

ASSUMPTION = "ASSUMPTION"


@dataclass(frozen=True)
class Param:
    value: float
    unit: str
    source: str
    doc: str = ""

    @property
    def assumed(self) -> bool:
        return self.source.startswith(ASSUMPTION)


def _a(value: float, unit: str, doc: str, why: str = "") -> Param:
    return Param(value, unit, ASSUMPTION + (f": {why}" if why else ""), doc)


# SEAMCALL latencies by (short) leaf name, µs per call.
SEAMCALL_US: dict[str, Param] = {
    "MEM.PAGE.DEMOTE": Param(10.0, "us", "tdx-module.md §8: ML-10us (Yan Zhao, 2025-05-15): "
                             "'around 10us' per call on SPR", "TDH.MEM.PAGE.DEMOTE 2M→4K"),
    "MEM.PAGE.PROMOTE": _a(10.0, "us", "TDH.MEM.PAGE.PROMOTE", "same order as DEMOTE "
                           "(inverse operation, also rewrites 512 entries)"),
    "MEM.PAGE.AUG": _a(2.0, "us", "TDH.MEM.PAGE.AUG (4K or 2M; no zeroing, ACCEPT zeroes)",
                       "no published cycles (tdx-module.md §8 'gap')"),
    "MEM.PAGE.ADD": _a(5.0, "us", "TDH.MEM.PAGE.ADD: copy + encrypt 4K, extend MRTD"),
    "MEM.SEPT.ADD": _a(2.0, "us", "TDH.MEM.SEPT.ADD"),
    "MEM.RANGE.BLOCK": _a(1.5, "us", "TDH.MEM.RANGE.BLOCK (tree lock exclusive)"),
    "MEM.RANGE.UNBLOCK": _a(1.5, "us", "TDH.MEM.RANGE.UNBLOCK"),
    "MEM.TRACK": _a(1.0, "us", "TDH.MEM.TRACK (epoch increment only)"),
    "MEM.PAGE.REMOVE": _a(1.5, "us", "TDH.MEM.PAGE.REMOVE"),
    "MEM.SEPT.REMOVE": _a(1.5, "us", "TDH.MEM.SEPT.REMOVE"),
    "PHYMEM.PAGE.WBINVD": _a(0.5, "us", "TDH.PHYMEM.PAGE.WBINVD, per 4K page (512 per 2M "
                             "page, HP3)"),
    "PHYMEM.PAGE.RECLAIM": _a(1.0, "us", "TDH.PHYMEM.PAGE.RECLAIM"),
    "VP.ENTER": _a(2.0, "us", "TDH.VP.ENTER beyond a plain VM entry (epoch, TLB checks)"),
    "MR.FINALIZE": _a(10.0, "us", "TDH.MR.FINALIZE"),
    "MNG.INIT": _a(10.0, "us", "TDH.MNG.INIT"),
}
DEFAULT_SEAMCALL = _a(2.0, "us", "any other SEAMCALL leaf")

VALUES: dict[str, Param] = {
    "accept_tdcall_us": _a(1.0, "us", "TDG.MEM.PAGE.ACCEPT fixed cost (TDCALL round trip)"),
    "zero_gbps": _a(10.0, "GB/s", "ACCEPT zeroes the page (MOVDIR64B) at this bandwidth: "
                    "4K ≈ 0.4 µs, 2M ≈ 210 µs"),
    "exit_roundtrip_us": _a(1.0, "us", "VM/TD exit + re-entry for an EPT violation "
                            "(hardware + KVM exit handling)"),
    "fault_us": _a(0.5, "us", "kvm_mmu_do_page_fault software path per fault "
                   "(walk, hugepage adjust, cmpxchg), excluding SEAMCALLs"),
    "write_lock_us": _a(2.0, "us", "mmu_lock taken for write: waits for readers and stalls "
                        "every vCPU's fault path meanwhile"),
    "read_lock_us": _a(0.02, "us", "uncontended read_lock/read_unlock"),
    "tlb_flush_us": _a(2.0, "us", "kvm_flush_remote_tlbs: request + INVEPT on the caller"),
    "tlb_flush_per_vcpu_us": _a(1.0, "us", "IPI + INVEPT per vCPU in guest mode"),
    "kick_us": _a(3.0, "us", "kvm_make_all_cpus_request(OUTSIDE_GUEST_MODE) with WAIT"),
    "kick_per_vcpu_us": _a(1.0, "us", "one vCPU forced out of the TD and acknowledged"),
    "mapgpa_chunk_us": _a(15.0, "us", "KVM_HC_MAP_GPA_RANGE exit to userspace + "
                          "KVM_SET_MEMORY_ATTRIBUTES per 2 MB chunk"),
    "walk_refs_native": Param(4.0, "refs", "architectural: 4-level paging, one reference "
                              "per level", "native page walk, 4K leaf"),
    "walk_refs_nested_4k": Param(24.0, "refs", "Bhargava et al., ASPLOS 2008: a 2D walk "
                                 "with 4-level guest and host tables takes (4+1)(4+1)-1 = 24",
                                 "nested walk, EPT leaf 4K"),
    "walk_refs_nested_2m": Param(19.0, "refs", "same formula with a 3-level EPT walk "
                                 "(2M EPT leaf): (4+1)(3+1)-1 = 19", "nested walk, EPT leaf 2M"),
    "walk_refs_nested_4k_pwc": _a(8.0, "refs", "nested walk with page-walk caches, EPT 4K",
                                  "PWCs cut most upper-level references"),
    "walk_refs_nested_2m_pwc": _a(5.0, "refs", "nested walk with page-walk caches, EPT 2M"),
    "walk_ref_ns": _a(20.0, "ns", "average cost of one page-walk memory reference "
                      "(mostly cache hits)"),
    "stlb_entries": _a(2048.0, "entries", "second-level TLB entries shared by 4K and 2M "
                       "translations (recent Intel server core)"),
    "tlb_reach_4k_mib": _a(8.0, "MiB", "STLB reach with 4K translations (2048 × 4 KiB)"),
    "tlb_reach_2m_mib": _a(4096.0, "MiB", "STLB reach with 2M translations (2048 × 2 MiB)"),
}


@dataclass(frozen=True)
class CostParams:
    """A named parameter set."""

    name: str = "default"
    values: Mapping[str, Param] = field(default_factory=lambda: dict(VALUES))
    seamcall_us: Mapping[str, Param] = field(default_factory=lambda: dict(SEAMCALL_US))
    default_seamcall: Param = DEFAULT_SEAMCALL

    def v(self, key: str) -> float:
        return self.values[key].value

    def seamcall(self, leaf: str) -> float:
        return self.seamcall_us.get(leaf, self.default_seamcall).value

    def rows(self) -> list[tuple[str, float, str, str]]:
        """(name, value, unit, source) for documentation and reports."""
        out = [(f"seamcall_us.{k}", p.value, p.unit, p.source)
               for k, p in sorted(self.seamcall_us.items())]
        out.append(("seamcall_us.(other)", self.default_seamcall.value,
                    self.default_seamcall.unit, self.default_seamcall.source))
        out += [(k, p.value, p.unit, p.source) for k, p in sorted(self.values.items())]
        return out


DEFAULT_PARAMS = CostParams()


class CostParamsError(ValueError):
    """One clear problem with a parameter file: file, key, what was expected."""


# The parameter file's schema.  strict: TOML's true is not a number, "1" is not 1.
_STRICT = ConfigDict(extra="forbid", strict=True)
_Value = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_Leaf = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$")]
_Values = create_model("values", __config__=_STRICT,
                       **{k: (Optional[_Value], None) for k in VALUES})


class _ParamsFile(BaseModel):
    model_config = _STRICT
    name: Optional[str] = None
    values: _Values = Field(default_factory=_Values)  # type: ignore[valid-type]
    seamcall_us: dict[_Leaf, _Value] = Field(default_factory=dict)


def params_from_doc(doc: Mapping[str, object], src: str,
                    base: CostParams = DEFAULT_PARAMS) -> CostParams:
    """Override ``base`` with a parsed parameter document; every value overridden gets
    the file as its source.  One ``CostParamsError`` names the file and the key."""
    try:
        f = _ParamsFile.model_validate(doc)
    except ValidationError as e:
        raise CostParamsError(validation_message(src, e, _ParamsFile)) from None
    values = dict(base.values)
    for k, v in f.values.model_dump(exclude_none=True).items():
        values[k] = replace(values[k], value=float(v), source=f"user file {src}")
    seam = dict(base.seamcall_us)
    for k, v in f.seamcall_us.items():
        seam[k] = Param(float(v), "us", f"user file {src}")
    return CostParams(f.name if f.name is not None else Path(src).stem, values, seam,
                      base.default_seamcall)


def load_params(path: str | Path) -> CostParams:
    p = Path(path)
    try:
        doc = tomllib.loads(read_user_text(p, "cost parameter file"))
    except NotTextError as e:
        raise CostParamsError(str(e)) from None
    except tomllib.TOMLDecodeError as e:
        raise CostParamsError(f"{p}: (syntax): expected valid TOML, got {e}") from None
    return params_from_doc(doc, str(p))
