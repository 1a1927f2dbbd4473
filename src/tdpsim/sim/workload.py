"""Workloads as small declarative TOML files, validated into frozen values.

Not a kernel file.  A workload describes one guest (a TD or a plain VM), the base policy
switches it runs with and an ordered list of phases — what the guest and the VMM do, in
the guest's own terms (accept this much memory at 4K on vCPU 0, touch these pages, convert
that range back and forth, enable dirty logging).  The engine turns phases into calls of
the model's public API; nothing here knows about KVM internals.

Validation gives exactly one ``WorkloadError`` for the first problem found, naming the file,
the dotted key (``phases[2].ranges[0].kib``) and what was expected.  Sizes are written in
MiB/KiB (``*_mib`` may be fractional) and must be multiples of 4 KiB.

Schema (every key optional unless marked *required*)::

    name = "td-boot"            # *required*
    description = "..."
    seed = 1                    # default seed for `run`/`compare`
    presets = ["hp3-seed", ...] # what `compare` runs when no --policy is given
    [vm]      kind = "td"|"vm" (*required*), vcpus, memory_gib, host_page "4K"|"2M"|"1G",
              gmem_folio "4K"|"2M"
    [policy]  any ``Policy`` switch: the base the presets are laid over
    [[phases]] kind (*required*) and the keys of that kind (``PHASE_KINDS``)
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from tdpsim.model.policy import Policy
from tdpsim.userfile import NotTextError, read_user_text

from .policies import POLICY_FIELDS, PolicyError, policy_from_switches

PAGE = 4096
MIB = 1 << 20
GIB = 1 << 30
LEVELS = {"4K": 1, "2M": 2, "1G": 3}
# Bounds on how much work one phase may ask for, so a typo (accesses = 100000000000000)
# is refused by validation instead of running until killed.  Each is far above what the
# built-in workloads use (at most 2000 accesses, 974 conversions) and still finishes in
# minutes.
MAX_ACCESSES = 10_000_000
MAX_TIMES = 100_000
MAX_RUNS = 10_000
MAX_THINK_US = 1e9
BUILTIN_PACKAGE = "tdpsim.sim.workloads"


class WorkloadError(ValueError):
    """One clear problem with a workload file: file, dotted key, what was expected."""

    def __init__(self, source: str, key: str, expected: str, got: Any = None,
                 *, has_got: bool = True) -> None:
        self.source, self.key, self.expected = source, key, expected
        msg = f"{source}: {key}: expected {expected}"
        if has_got:
            msg += f", got {_show(got)}"
        super().__init__(msg)


def _show(v: Any) -> str:
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "a list"
    return repr(v)


@dataclass(frozen=True)
class Range:
    """[start, start + size) of guest-physical memory, in bytes (4 KiB aligned)."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def start_gfn(self) -> int:
        return self.start // PAGE

    @property
    def npages(self) -> int:
        return self.size // PAGE


@dataclass(frozen=True)
class VmSpec:
    """The guest's shape (``VmConfig`` minus the policy)."""

    kind: str = "td"
    vcpus: int = 1
    memory_bytes: int = 4 * GIB
    host_page_level: int = 2
    gmem_folio_order: int = 9
    # "linux": accepts private memory before touching it; "touch-first": a non-Linux guest
    # (#VE on, no SEPT_VE_DISABLE) that touches converted-back memory first and accepts
    # at 4K from its #VE handler — case (b) of the TDX huge-page cover letter.
    guest: str = "linux"

    @property
    def tdx(self) -> bool:
        return self.kind == "td"


@dataclass(frozen=True)
class Phase:
    """One step of the workload; ``params`` are validated and normalised (bytes, levels,
    vCPU lists) for the engine."""

    name: str
    kind: str
    params: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    source: str
    vm: VmSpec
    policy: Mapping[str, Any]
    phases: tuple[Phase, ...]
    seed: int = 1
    presets: tuple[str, ...] = ("hp3-seed", "no-lpage-check-first")
    # Figures published on the list for this workload: report row id -> text.
    published: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def base_policy(self) -> Policy:
        return policy_from_switches(self.policy)

    def with_vm(self, *, memory_gib: float | None = None, vcpus: int | None = None
                ) -> "Workload":
        """The same workload on a resized guest (``--memory-gib``/``--vcpus``): validated
        again, since ranges must still fit."""
        raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.raw.items()}
        vm = dict(raw.get("vm", {}))
        if memory_gib is not None:
            vm["memory_gib"] = memory_gib
        if vcpus is not None:
            vm["vcpus"] = vcpus
        raw["vm"] = vm
        return parse_workload(raw, self.source)


# ----------------------------------------------------------------------------- primitives

class _Ctx:
    """Where we are in the document, for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, got: Any = None, *, has_got: bool = True):
        raise WorkloadError(self.source, key, expected, got, has_got=has_got)


def _int(c: _Ctx, key: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        c.fail(key, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        c.fail(key, f"an integer {rng}", v)
    return v


def _num(c: _Ctx, key: str, v: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        c.fail(key, "a number", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        c.fail(key, f"a number {rng}", v)
    return float(v)


def _bool(c: _Ctx, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        c.fail(key, "true or false", v)
    return v


def _str(c: _Ctx, key: str, v: Any) -> str:
    if not isinstance(v, str):
        c.fail(key, "a string", v)
    return v


def _choice(choices: tuple[str, ...]) -> Callable[[_Ctx, str, Any], str]:
    def check(c: _Ctx, key: str, v: Any) -> str:
        if v not in choices:
            c.fail(key, "one of " + ", ".join(f'"{x}"' for x in choices), v)
        return v
    return check


def _bytes(c: _Ctx, key: str, v: Any, unit: int, lo: int = 0) -> int:
    """A size in MiB/KiB (may be fractional), as bytes: a multiple of 4 KiB."""
    n = _num(c, key, v, lo=0)
    b = n * unit
    if b != int(b) or int(b) % PAGE:
        c.fail(key, "a multiple of 4 KiB", v)
    if int(b) < lo:
        c.fail(key, f"at least {lo // 1024} KiB", v)
    return int(b)


def _size(c: _Ctx, key: str, tbl: Mapping[str, Any], required: bool = True) -> int | None:
    """``<x>_mib`` or ``<x>_kib`` style pair given as ``mib``/``kib`` keys of a table."""
    has_mib, has_kib = "mib" in tbl, "kib" in tbl
    if has_mib and has_kib:
        c.fail(f"{key}.kib", "only one of mib or kib", tbl["kib"])
    if has_mib:
        return _bytes(c, f"{key}.mib", tbl["mib"], MIB, lo=PAGE)
    if has_kib:
        return _bytes(c, f"{key}.kib", tbl["kib"], 1024, lo=PAGE)
    if required:
        c.fail(key, "a size: mib = N or kib = N", has_got=False)
    return None


def _range(c: _Ctx, key: str, v: Any, mem: int) -> Range:
    """``{ at_mib = N, mib|kib = N }`` or, to quote gfns from a trace or a mail,
    ``{ at_gfn = 0x7d9d7, pages = N }`` (the two start keys and the size keys mix)."""
    if not isinstance(v, dict):
        c.fail(key, "a table { at_mib = N, mib = N } (or kib = N)", v)
    _no_extra(c, key, v, ("at_mib", "at_gfn", "mib", "kib", "pages"))
    if "at_mib" in v and "at_gfn" in v:
        c.fail(f"{key}.at_gfn", "only one of at_mib or at_gfn", v["at_gfn"])
    if "at_gfn" in v:
        start = _int(c, f"{key}.at_gfn", v["at_gfn"], 0) * PAGE
    elif "at_mib" in v:
        start = _bytes(c, f"{key}.at_mib", v["at_mib"], MIB)
    else:
        c.fail(f"{key}.at_mib", "a start address in MiB (at_mib = N)", has_got=False)
    if "pages" in v:
        if "mib" in v or "kib" in v:
            c.fail(f"{key}.pages", "only one of mib, kib or pages", v["pages"])
        size = _int(c, f"{key}.pages", v["pages"], 1) * PAGE
    else:
        size = _size(c, key, v)
    if start + size > mem:
        c.fail(key, f"a range inside guest memory ({mem // MIB} MiB); "
                    f"ends at {(start + size) / MIB:g} MiB", has_got=False)
    return Range(start, size)


def _ranges(c: _Ctx, key: str, v: Any, mem: int) -> tuple[Range, ...]:
    if isinstance(v, dict):
        return (_range(c, key, v, mem),)
    if not isinstance(v, list) or not v:
        c.fail(key, "a non-empty list of { at_mib = N, mib = N } tables", v)
    return tuple(_range(c, f"{key}[{i}]", r, mem) for i, r in enumerate(v))


def _vcpus(c: _Ctx, key: str, v: Any, nr: int) -> tuple[int, ...]:
    if v == "all":
        return tuple(range(nr))
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v:
        c.fail(key, f'"all" or a list of vCPU ids below {nr}', v)
    out = []
    for i, x in enumerate(v):
        out.append(_int(c, f"{key}[{i}]", x, 0, nr - 1))
    if len(set(out)) != len(out):
        c.fail(key, "distinct vCPU ids", v)
    return tuple(out)


def _no_extra(c: _Ctx, key: str, tbl: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for k in tbl:
        if k not in allowed:
            where = f"{key}.{k}" if key else k
            c.fail(where, "no such key here; allowed: " + ", ".join(allowed), has_got=False)


# ----------------------------------------------------------------------------- phase kinds

# key -> (checker(c, key, value, vm) -> normalised, default or REQUIRED)
REQUIRED = object()
Checker = Callable[[_Ctx, str, Any, VmSpec], Any]


def _k_int(lo: int | None = None, hi: int | None = None) -> Checker:
    return lambda c, k, v, vm: _int(c, k, v, lo, hi)


def _k_num(lo: float | None = None, hi: float | None = None) -> Checker:
    return lambda c, k, v, vm: _num(c, k, v, lo, hi)


def _k_bool(c: _Ctx, k: str, v: Any, vm: VmSpec) -> bool:
    return _bool(c, k, v)


def _k_str(c: _Ctx, k: str, v: Any, vm: VmSpec) -> str:
    return _str(c, k, v)


def _k_choice(*choices: str) -> Checker:
    check = _choice(choices)
    return lambda c, k, v, vm: check(c, k, v)


def _k_ranges(c: _Ctx, k: str, v: Any, vm: VmSpec) -> tuple[Range, ...]:
    return _ranges(c, k, v, vm.memory_bytes)


def _k_range(c: _Ctx, k: str, v: Any, vm: VmSpec) -> Range:
    return _range(c, k, v, vm.memory_bytes)


def _k_vcpus(c: _Ctx, k: str, v: Any, vm: VmSpec) -> tuple[int, ...]:
    return _vcpus(c, k, v, vm.vcpus)


def _k_mib(lo: int = 0) -> Checker:
    return lambda c, k, v, vm: _bytes(c, k, v, MIB, lo)


def _k_kib(lo: int = PAGE) -> Checker:
    return lambda c, k, v, vm: _bytes(c, k, v, 1024, lo)


_COMMON: dict[str, tuple[Checker, Any]] = {
    "name": (_k_str, None),
    "vcpus": (_k_vcpus, "all"),
    "think_us": (_k_num(0, MAX_THINK_US), 1.0),
    # Which part of the guest's life the phase belongs to (boot figures count "2M
    # mappings from kernel boot to login" over the kernel stage only).
    "stage": (_k_choice("build", "firmware", "kernel"), "kernel"),
}

# What each kind models is documented in docs/workloads.md and on the engine's handlers.
PHASE_KINDS: dict[str, dict[str, tuple[Checker, Any]]] = {
    # KVM_TDX_INIT_MEM_REGION (PAGE.ADD at 4K) of the initial image, then KVM_TDX_FINALIZE_VM.
    "td_build": {"sections": (_k_ranges, REQUIRED)},
    # Guest accepts memory: explicit ranges, or `mib` lazily in 2M units from `start_mib`.
    "accept": {
        "level": (_k_choice("4K", "linux"), "linux"),
        "ranges": (_k_ranges, None),
        "mib": (_k_mib(PAGE), None),
        "start_mib": (_k_mib(0), 0),
        "order": (_k_choice("ascending", "descending", "random"), "ascending"),
        "complete_partial": (_k_bool, False),
    },
    # Steady-state accesses with a pattern.
    "touch": {
        "region": (_k_range, REQUIRED),
        "accesses": (_k_int(1, MAX_ACCESSES), REQUIRED),
        "pattern": (_k_choice("sequential", "random", "hotcold"), "sequential"),
        "stride_kib": (_k_kib(), 4),
        "hot_mib": (_k_mib(PAGE), None),
        "hot_probability": (_k_num(0, 1), 0.9),
        "write_fraction": (_k_num(0, 1), 0.5),
        "exec_fraction": (_k_num(0, 1), 0.0),
        "shared": (_k_bool, False),
        "nx_recovery_period_us": (_k_num(0, MAX_THINK_US), 0.0),
        "nx_recovery_ratio": (_k_int(1, 10_000), 60),
    },
    # Private<->shared conversions (MapGPA + KVM_SET_MEMORY_ATTRIBUTES), then re-accept.
    "convert": {
        "region": (_k_range, None),
        "ranges": (_k_ranges, None),   # instead of region: units taken from each range
        "unit_kib": (_k_kib(), 4),
        "times": (_k_int(1, MAX_TIMES), 1),
        "to": (_k_choice("shared", "private", "roundtrip"), "roundtrip"),
        "pattern": (_k_choice("sequential", "random"), "sequential"),
        "touch_shared": (_k_bool, True),
        "discard": (_k_bool, False),
    },
    # guest_memfd FALLOC_FL_PUNCH_HOLE of ranges (converted to shared first, as QEMU does).
    "punch_hole": {"ranges": (_k_ranges, REQUIRED), "convert_first": (_k_bool, True)},
    # KVM_SET_USER_MEMORY_REGION flags change: dirty logging on (eager split) / off (recover).
    "dirty_log": {"enable": (_k_bool, REQUIRED)},
    # The NX huge page recovery worker (kvm_recover_nx_huge_pages) run `runs` times.
    "nx_recovery": {"runs": (_k_int(1, MAX_RUNS), 1), "ratio": (_k_int(1, 10_000), 60)},
}

TD_ONLY = {"td_build", "punch_hole", "convert"}
VM_ONLY = {"dirty_log"}


def _phase(c: _Ctx, i: int, v: Any, vm: VmSpec) -> Phase:
    key = f"phases[{i}]"
    if not isinstance(v, dict):
        c.fail(key, "a table ([[phases]])", v)
    if "kind" not in v:
        c.fail(f"{key}.kind", "one of " + ", ".join(f'"{k}"' for k in PHASE_KINDS),
               has_got=False)
    kind = _choice(tuple(PHASE_KINDS))(c, f"{key}.kind", v["kind"])
    spec = {**_COMMON, **PHASE_KINDS[kind]}
    _no_extra(c, key, v, ("kind", *spec))
    if kind in TD_ONLY and not vm.tdx:
        c.fail(f"{key}.kind", f'a phase a plain VM can run ("{kind}" needs vm.kind = "td")',
               kind)
    if kind in VM_ONLY and vm.tdx:
        c.fail(f"{key}.kind", f'a phase a TD can run ("{kind}" needs vm.kind = "vm": '
               "guest_memfd slots cannot log dirty pages)", kind)
    params: dict[str, Any] = {}
    for k, (check, default) in spec.items():
        if k in v:
            params[k] = check(c, f"{key}.{k}", v[k], vm)
        elif default is REQUIRED:
            c.fail(f"{key}.{k}", "this key (required for kind "
                   f'"{kind}")', has_got=False)
        elif default is None:
            params[k] = None
        else:  # defaults go through the same normalisation (units → bytes, "all" → ids)
            params[k] = check(c, f"{key}.{k}", default, vm)
    if kind == "accept":
        n = (params["ranges"] is not None) + (params["mib"] is not None)
        if n > 1 or (n == 0 and not params["complete_partial"]):
            c.fail(key, "exactly one of ranges or mib (lazy accept), or only "
                   "complete_partial = true", has_got=False)
    if kind == "accept" and params["mib"] is not None:
        if params["start_mib"] + params["mib"] > vm.memory_bytes:
            c.fail(f"{key}.mib", f"start_mib + mib within guest memory "
                   f"({vm.memory_bytes // MIB} MiB)", v["mib"])
    if kind == "convert" and (params["region"] is None) == (params["ranges"] is None):
        c.fail(key, "exactly one of region or ranges", has_got=False)
    if kind == "touch" and params["pattern"] == "hotcold" and params["hot_mib"] is None:
        c.fail(f"{key}.hot_mib", 'a hot-set size for pattern = "hotcold"', has_got=False)
    if kind == "touch" and params["shared"] and not vm.tdx:
        c.fail(f"{key}.shared", "false on a plain VM (all its memory is shared)", True)
    name = params.pop("name") or f"{kind}"
    return Phase(name, kind, params)


def _vm(c: _Ctx, v: Any) -> VmSpec:
    if not isinstance(v, dict):
        c.fail("vm", "a table [vm]", v)
    _no_extra(c, "vm", v, ("kind", "vcpus", "memory_gib", "host_page", "gmem_folio",
                           "guest"))
    if "kind" not in v:
        c.fail("vm.kind", '"td" or "vm"', has_got=False)
    kind = _choice(("td", "vm"))(c, "vm.kind", v["kind"])
    vcpus = _int(c, "vm.vcpus", v.get("vcpus", 1), 1, 512)
    mem = _bytes(c, "vm.memory_gib", v.get("memory_gib", 4), GIB, lo=2 * MIB)
    if mem % (2 * MIB):
        c.fail("vm.memory_gib", "a multiple of 2 MiB", v.get("memory_gib"))
    if mem > 4096 * GIB:
        c.fail("vm.memory_gib", "at most 4096 GiB", v.get("memory_gib"))
    host = _choice(tuple(LEVELS))(c, "vm.host_page", v.get("host_page", "2M"))
    folio = _choice(("4K", "2M"))(c, "vm.gmem_folio", v.get("gmem_folio", "2M"))
    guest = _choice(("linux", "touch-first"))(c, "vm.guest", v.get("guest", "linux"))
    if guest != "linux" and kind != "td":
        c.fail("vm.guest", '"linux" on a plain VM (nothing to accept)', guest)
    return VmSpec(kind, vcpus, mem, LEVELS[host], 0 if folio == "4K" else 9, guest)


def parse_workload(doc: Mapping[str, Any], source: str) -> Workload:
    """Validate a parsed TOML document; raises one ``WorkloadError``."""
    c = _Ctx(source)
    _no_extra(c, "", doc, ("name", "description", "seed", "presets", "vm", "policy",
                            "phases", "published"))
    if "name" not in doc:
        c.fail("name", "a workload name (name = \"...\")", has_got=False)
    name = _str(c, "name", doc["name"])
    desc = _str(c, "description", doc.get("description", ""))
    seed = _int(c, "seed", doc.get("seed", 1), 0)
    if "vm" not in doc:
        c.fail("vm", "a [vm] table", has_got=False)
    vm = _vm(c, doc["vm"])
    pol = doc.get("policy", {})
    if not isinstance(pol, dict):
        c.fail("policy", "a [policy] table of Policy switches", pol)
    for k, val in pol.items():
        if k not in POLICY_FIELDS:
            c.fail(f"policy.{k}", "a Policy switch (" + ", ".join(POLICY_FIELDS) + ")",
                   has_got=False)
        try:
            policy_from_switches({k: val})
        except PolicyError as e:
            c.fail(f"policy.{k}", f"a valid value ({e})", val)
    presets = doc.get("presets", ["hp3-seed", "no-lpage-check-first"])
    if not isinstance(presets, list) or not presets:
        c.fail("presets", "a non-empty list of policy preset names", presets)
    from .policies import PRESETS, is_preset
    for i, pname in enumerate(presets):
        if not is_preset(pname):
            c.fail(f"presets[{i}]", "one of " + ", ".join(PRESETS), pname)
    phases = doc.get("phases")
    if not isinstance(phases, list) or not phases:
        c.fail("phases", "at least one [[phases]] table", phases, has_got=phases is not None)
    parsed = tuple(_phase(c, i, p, vm) for i, p in enumerate(phases))
    published = doc.get("published", {})
    if not isinstance(published, dict):
        c.fail("published", "a table of metric = \"figure\" strings", published)
    for k, val in published.items():
        _str(c, f"published.{k}", val)
    return Workload(name, desc, source, vm, dict(pol), parsed, seed, tuple(presets),
                    dict(published), raw=dict(doc))


def load_workload(path: str | Path) -> Workload:
    """Read and validate a workload file."""
    p = Path(path)
    try:
        text = read_user_text(p, "workload")
    except NotTextError as e:
        raise WorkloadError(e.where, "(file)", f"a readable TOML file; {e.reason}",
                            has_got=False) from None
    return loads_workload(text, str(p))


def loads_workload(text: str, source: str = "<string>") -> Workload:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WorkloadError(source, "(syntax)", "valid TOML", str(e)) from None
    return parse_workload(doc, source)


def builtin_names() -> list[str]:
    files = resources.files(BUILTIN_PACKAGE)
    return sorted(f.name[:-5] for f in files.iterdir() if f.name.endswith(".toml"))


def builtin_workload(name: str) -> Workload:
    f = resources.files(BUILTIN_PACKAGE) / f"{name}.toml"
    return loads_workload(f.read_text(), f"{name} (built-in)")


def resolve_workload(spec: str) -> Workload:
    """A built-in name, or a path to a TOML file."""
    if spec in builtin_names():
        return builtin_workload(spec)
    p = Path(spec)
    if p.suffix == ".toml" or p.exists() or "/" in spec:
        return load_workload(p)
    raise WorkloadError(spec, "(workload)", "a built-in workload name ("
                        + ", ".join(builtin_names()) + ") or a path to a .toml file",
                        has_got=False)
