"""Streaming parser for ``trace-cmd report`` output and raw ftrace text.

Accepted line layouts (one event per line)::

    <comm>-<pid> [(<tgid>)] [<cpu>] [<irq-flags>] <timestamp>: <event>: <text>

which covers ``/sys/kernel/tracing/trace`` and ``trace_pipe`` (with or without the
``# tracer:`` header block, with or without the irq-info column ``d..1.`` and the
``record-tgid`` column) and ``trace-cmd report`` (with or without ``-l`` latency flags).
Comments (``#``), blank lines, ``cpus=N``/``version = N`` and other non-event lines are
counted and skipped; events of other systems are counted and skipped without being parsed;
``CPU:N [LOST M EVENTS]`` / ``CPU N [LOST M EVENTS]`` lines are counted in
:attr:`TraceStats.lost_events`.

A line whose event name is one of ours but whose header or text does not parse raises
:class:`TraceParseError` (file, line number, line text, failing field), or with
``skip_bad=True`` is counted and skipped.

Limitation: a task name (comm) that itself contains a digit followed by ``": "`` cannot be
told apart from the timestamp; such lines are counted as non-event lines.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from .formats import format_pferr_flags
from .records import (
    EVENT_CLASSES,
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
    TraceRecord,
)

__all__ = [
    "TraceParseError",
    "TraceStats",
    "BadLine",
    "TraceParser",
    "parse_trace",
    "parse_line",
    "SUPPORTED_EVENTS",
]


# ---------------------------------------------------------------------------------------
# Errors and statistics
# ---------------------------------------------------------------------------------------


class TraceParseError(ValueError):
    """A line that names one of our events does not parse."""

    def __init__(self, filename: str, lineno: int, line: str, field: str, reason: str,
                 event: str | None = None) -> None:
        self.filename = filename
        self.lineno = lineno
        self.line = line
        self.field = field
        self.reason = reason
        self.event = event
        ev = f" {event}" if event else ""
        super().__init__(
            f"{filename}:{lineno}: bad{ev} line: field '{field}': {reason}: {line!r}"
        )


@dataclass(frozen=True, slots=True)
class BadLine:
    """One example of a skipped bad line (``skip_bad=True``)."""

    filename: str
    lineno: int
    line: str
    field: str
    reason: str


@dataclass(slots=True)
class TraceStats:
    """Counters filled while a :class:`TraceParser` is iterated.

    ``events``, ``skipped_comments``, ``lost_events`` and the bad-line fields are updated
    live; ``lines`` and ``skipped_other`` are kept in locals on the hot path and folded in
    when the iteration ends (exhausted, error, or generator closed)."""

    lines: int = 0
    events: dict[str, int] = field(default_factory=dict)
    skipped_other: int = 0
    skipped_comments: int = 0
    lost_events: int = 0
    bad_lines: int = 0
    bad_examples: list[BadLine] = field(default_factory=list)

    @property
    def parsed(self) -> int:
        return sum(self.events.values())


class _FieldError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason


# ---------------------------------------------------------------------------------------
# Field kinds: regex + converter
# ---------------------------------------------------------------------------------------

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def _hex(s: str) -> int:
    return int(s, 16)


def _dec(limit: int) -> Callable[[str], int]:
    def conv(s: str) -> int:
        v = int(s)
        if v > limit:
            raise ValueError(f"{s} exceeds {limit}")
        return v
    return conv


def _s32(s: str) -> int:
    v = int(s)
    if not -(1 << 31) <= v < (1 << 31):
        raise ValueError(f"{s} is not a 32-bit int")
    return v


def _ptr(s: str) -> int:
    if s[0] == "(":
        return 0
    return int(s, 16)


def _num(limit: int) -> Callable[[str], int]:
    def conv(s: str) -> int:
        v = int(s, 0)
        if v > limit:
            raise ValueError(f"{s} exceeds {limit}")
        return v
    return conv


@functools.lru_cache(maxsize=1024)  # a trace has a handful of distinct error codes
def _pferr(s: str) -> int:
    """``__print_flags`` of fast_page_fault's error_code: a u32 up to 2024, then the full
    u64 ("KVM: x86/mmu: Pass full 64-bit error code when handling page faults"), whose
    high bits (PFERR_GUEST_FINAL/PAGE, PFERR_PRIVATE_ACCESS) print as one hex leftover,
    e.g. ``P|W|U|0x100000000``."""
    value = 0
    for tok in s.split("|") if s else ():
        if tok.startswith("0x"):
            value |= int(tok, 16)
        else:
            value |= {"P": 1, "W": 2, "U": 4, "RSVD": 8, "F": 16}[tok]
    # 64 bits: since fault->error_code became u64 the tracepoint prints its high bits too
    # (6.12: "P|W|U|0x100000000", PFERR_GUEST_FINAL_MASK)
    if value > _U64 or format_pferr_flags(value) != s:
        raise ValueError(f"{s!r} is not a canonical __print_flags() string")
    return value


_ACCESS = {a: i for i, a in enumerate(("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux"))}
#: ``int(s)`` for the canonical decimal text of 0..255 (what the u2/u4/u8/gpte regexes
#: accept), a dict lookup being about twice as fast as ``int``.
_SMALL = {str(i): i for i in range(256)}
_HEX64 = r"0|[1-9a-f][0-9a-f]{0,15}"
_HEX32 = r"0|[1-9a-f][0-9a-f]{0,7}"

_KINDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "x": (_HEX64, _hex),                       # %llx / %lx (64-bit)
    "x32": (_HEX32, _hex),                     # %x of a 32-bit value
    "x16": (r"[0-9a-f]{16}", _hex),            # %016llx
    "x08": (r"[0-9a-f]{8}", _hex),             # %08x
    "xpfx": (r"0x(?:" + _HEX64 + r")|0", _hex),  # %#llx (kernel "0x0"; glibc "0")
    "ptr": (r"[0-9a-f]{1,16}|0x[0-9a-f]{1,16}|\(nil\)|\(null\)", _ptr),
    "u2": (r"[0-3]", int),
    "u4": (r"1[0-5]|[0-9]", int),
    "u8": (r"25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]", int),  # 0..255 by regex
    "u32": (r"0|[1-9][0-9]{0,9}", _dec(_U32)),
    "d32": (r"0|-?[1-9][0-9]{0,9}", _s32),
    "b01": (r"[01]", lambda s: s == "1"),
    "r": (r"[r-]", lambda s: s == "r"),
    "w": (r"[w-]", lambda s: s == "w"),
    "xf": (r"[x-]", lambda s: s == "x"),
    "u": (r"[u-]?", lambda s: -1 if not s else (1 if s == "u" else 0)),
    "direct": (r"(?: direct)?", bool),
    "invalid": (r"(?: invalid)?", bool),
    "smep": (r"(?: smep)?", bool),
    "smap": (r"(?: smap)?", bool),
    "smm": (r"(?: smm)?", bool),
    "access": (r"---|--x|w--|w-x|-u-|-ux|wu-|wux", _ACCESS.__getitem__),
    "bang": (r"!?", lambda s: s == "!"),
    "gpte": (r"[48]", int),
    "sync": (r"sync|unsync", lambda s: s == "unsync"),
    "created": (r"new|existing", lambda s: s == "new"),
    "reason": (r"\S+(?: \S+)*?", str),
    "sym": (r"(?: \S+)?", lambda s: s[1:] if s else None),
    "imm": (r"(?:\[immediate exit\])?", bool),
    "pferr": (r"(?:(?:P|W|U|RSVD|F|0x[0-9a-f]{1,16})(?:\|(?:P|W|U|RSVD|F|0x[0-9a-f]{1,16}))*)?", _pferr),
    "n8": (r"0x[0-9a-f]{1,16}|0|[1-9][0-9]{0,19}", _num(0xFF)),
    "n32": (r"0x[0-9a-f]{1,16}|0|[1-9][0-9]{0,19}", _num(_U32)),
    "n64": (r"0x[0-9a-f]{1,16}|0|[1-9][0-9]{0,19}", _num((1 << 64) - 1)),
    "nb": (r"0x[0-9a-f]{1,16}|0|[1-9][0-9]{0,19}", _num(1)),
}

#: Inline conversion expressions for the generated fast converters (``G`` = group text).
#: Kinds missing here are converted by calling their ``_KINDS`` converter.
_KIND_EXPR: dict[str, str] = {
    "x": "int(G, 16)", "x32": "int(G, 16)", "x16": "int(G, 16)", "x08": "int(G, 16)",
    "xpfx": "int(G, 16)", "u8": "int(G)", "u2": "int(G)", "u4": "int(G)", "gpte": "int(G)",
    "b01": "G == '1'", "r": "G == 'r'", "w": "G == 'w'", "xf": "G == 'x'",
    "u": "(1 if G == 'u' else 0) if G else -1", "direct": "G != ''", "invalid": "G != ''",
    "smep": "G != ''", "smap": "G != ''", "smm": "G != ''", "imm": "G != ''",
    "access": "_ACCESS[G]", "bang": "G == '!'", "sync": "G == 'unsync'",
    "created": "G == 'new'", "reason": "G", "sym": "G[1:] if G else None",
}
#: The fast path's expressions: small decimals (regex-checked canonical 0..255) by lookup.
#: A u32 of fewer than 10 digits cannot exceed U32_MAX; a ptr is hex or "(nil)"/"(null)".
_TAIL_EXPR: dict[str, str] = {**_KIND_EXPR, "u8": "_SMALL[G]", "u2": "_SMALL[G]",
                              "u4": "_SMALL[G]", "gpte": "_SMALL[G]",
                              "u32": "int(G) if len(G) < 10 else _U32C(G)",
                              "ptr": "0 if G[0] == '(' else int(G, 16)"}
#: The fast path's regexes: what they accept beyond the reference's is rejected by the
#: conversion (u8: ``_SMALL`` holds only the canonical 0..255), cheaper to match than
#: the reference's alternation.
_TAIL_KINDS = {**_KINDS, "u8": (r"[0-9]{1,3}", _KINDS["u8"][1])}
#: Kinds whose fast conversion cannot fail on a text their regex accepts.
_TAIL_SAFE = frozenset(_TAIL_EXPR) - {"u8", "u32"}

#: Header up to (and including) the blank before the timestamp: comm, pid, tgid, cpu, flags.
_HDR_PREFIX = (
    r"[ \t]*(.+?)-([0-9]{1,10})[ \t]+(?:\([ \t]*([0-9]{1,10}|-+)\)[ \t]+)?\[([0-9]{1,6})\][ \t]+"
    r"(?:([^ \t]{1,8})[ \t]+)?"
)
#: The timestamp (no blanks, so it is exactly the text after the last blank of the header).
_HDR_TS = r"([0-9]{1,20}(?:\.[0-9]{1,12})?)"
_HDR_PATTERN = _HDR_PREFIX + _HDR_TS
#: The same language, possessive (the ``: `` after it never needs a digit given back).
_TAIL_TS = r"([0-9]{1,20}+(?:\.[0-9]{1,12}+)?)"
_HEADER_FIELDS = ("comm", "pid", "cpu", "timestamp", "lineno", "tgid", "flags")


def _tgid(s: str) -> int:
    return -1 if s[0] == "-" else int(s)


_FIELD_RE = re.compile(r"\{(\w+):(\w+)\}")


class _Template:
    """A TP_printk-like template: literal text with ``{name:kind}`` fields."""

    __slots__ = ("text", "style", "tokens", "regex", "convs", "names", "assemble", "suffix",
                 "_prefixes", "fast", "line_regex", "line_fast", "tail_regex")

    def __init__(self, text: str, style: str,
                 assemble: Callable[[list[Any]], tuple[Any, ...]] | tuple[Any, ...] = ()) -> None:
        self.text = text
        self.style = style
        # ``assemble`` maps the converted values (template order) to the record's event
        # fields; a tuple means "values as they are, followed by these constants".
        if isinstance(assemble, tuple):
            self.assemble: Callable[[list[Any]], tuple[Any, ...]] | None = None
            self.suffix: tuple[Any, ...] = assemble
        else:
            self.assemble = assemble
            self.suffix = ()
        tokens: list[tuple[str, str | None]] = []  # (literal, None) or (name, kind)
        pos = 0
        for m in _FIELD_RE.finditer(text):
            if m.start() > pos:
                tokens.append((text[pos:m.start()], None))
            tokens.append((m.group(1), m.group(2)))
            pos = m.end()
        if pos < len(text):
            tokens.append((text[pos:], None))
        self.tokens = tokens
        self.convs = [_KINDS[k][1] for _, k in tokens if k is not None]
        self.names = [n for n, k in tokens if k is not None]
        self._prefixes: list[re.Pattern[str]] | None = None
        # compiled by bind(), when a trace first shows the event (start-up stays short)
        self.regex: re.Pattern[str] | None = None
        self.fast: Callable[[re.Match[str]], tuple[Any, ...]] | None = None
        self.line_regex: re.Pattern[str] | None = None
        self.line_fast: Callable[[re.Match[str], int], TraceRecord] | None = None

    @staticmethod
    def _pattern(tokens: Sequence[tuple[str, str | None]],
                 kinds: dict[str, tuple[str, Any]] = _KINDS) -> str:
        out = []
        for t, k in tokens:
            out.append(re.escape(t) if k is None else "(" + kinds[k][0] + ")")
        return "".join(out)

    def bind(self, event: str, build: Callable[..., TraceRecord]) -> None:
        """Compile the whole-line regex (header + ``: <event>:`` + body) and its
        generated ``line_fast(match, lineno) -> record``; and the body's."""
        self.regex = re.compile(self._pattern(self.tokens), re.ASCII)
        self.fast = self._gen(None)
        self.line_regex = re.compile(
            _HDR_PATTERN + re.escape(": " + event + ":") + r"[ \t]*"
            + self._pattern(self.tokens) + r"[ \t\r\n\x00]*",
            re.ASCII,
        )
        self.line_fast = self._gen(build)

    def bind_tail(self, cls: type[TraceRecord], ns: dict[str, Any], t: int) -> None:
        """Compile the fast path's regex, ``tail_regex``: timestamp + ``: <event>:`` + body,
        matched from the start of the timestamp (the header before it comes from a cache,
        see :meth:`TraceParser._header`).  Names for the generated code go into ``ns``
        (suffixed with the template index ``t``)."""
        self.tail_regex = re.compile(
            _TAIL_TS + re.escape(": " + cls.EVENT + ":") + r"[ \t]*"
            + self._pattern(self.tokens, _TAIL_KINDS) + r"[ \t\r\n\x00]*",
            re.ASCII,
        )
        ns[f"_m{t}"] = self.tail_regex.fullmatch
        ns[f"_asm{t}"] = self.assemble
        ns[f"_sfx{t}"] = self.suffix
        for i, k in enumerate(k for _, k in self.tokens if k is not None):
            if k not in _TAIL_EXPR:
                ns[f"_c{t}_{i}"] = _KINDS[k][1]

    def tail_source(self, cls: type[TraceRecord], t: int,
                    wanted: Sequence[int] | None) -> dict[str, Any]:
        """The source fragments that convert a match of ``tail_regex`` (the same
        conversions and checks as ``line_fast``) for :func:`_gen_fast`: ``convert`` (may
        raise: then the reference path decides) and ``values``, the expressions of the
        event fields at the indices ``wanted`` (None: all).  A field nobody wants is not
        converted when its conversion cannot fail (the regex already checked its text)."""
        names = [f.name for f in dataclasses.fields(cls)]
        nhdr = len(_HEADER_FIELDS)
        assert names[:nhdr] == list(_HEADER_FIELDS), names
        kinds = [k for _, k in self.tokens if k is not None]
        gs = [f"g{i}" for i in range(len(kinds))]
        exprs = [("(" + _TAIL_EXPR[k].replace("G", gs[i]) + ")") if k in _TAIL_EXPR
                 else f"_c{t}_{i}({gs[i]})" for i, k in enumerate(kinds)]
        n_ev = len(names) - nhdr
        keep = range(n_ev) if wanted is None else wanted
        if self.assemble is None:
            if len(exprs) + len(self.suffix) != n_ev:
                raise TypeError(f"{cls.__name__}: template {self.text!r} does not fill the fields")
            conv = [f"v{i} = {e}" for i, e in enumerate(exprs)
                    if i in keep or kinds[i] not in _TAIL_SAFE]
            vals = [f"v{i}" if i < len(exprs) else f"_sfx{t}[{i - len(exprs)}]" for i in keep]
        else:
            conv = [f"{''.join(f'v{i}, ' for i in range(n_ev))}= _asm{t}([{', '.join(exprs)}])"]
            vals = [f"v{i}" for i in keep]
        return {
            "convert": [f"ts, {''.join(g + ', ' for g in gs)}= m.groups()", *conv],
            "values": vals,
        }

    def _gen(self, build: Callable[..., TraceRecord] | None) -> Callable[..., Any]:
        """Generate the converter.  ``build is None``: ``fast(body_match) -> event field
        tuple``; else ``fast(line_match, lineno) -> record``.  Any exception it raises is
        re-diagnosed by the slow path."""
        kinds = [k for _, k in self.tokens if k is not None]
        gs = [f"g{i}" for i in range(len(kinds))]
        ns: dict[str, Any] = {"_ACCESS": _ACCESS, "_asm": self.assemble, "_sfx": self.suffix,
                              "_build": build, "_tgid": _tgid}
        exprs = []
        for i, k in enumerate(kinds):
            if k in _KIND_EXPR:
                exprs.append("(" + _KIND_EXPR[k].replace("G", gs[i]) + ")")
            else:
                ns[f"_c{i}"] = _KINDS[k][1]
                exprs.append(f"_c{i}({gs[i]})")
        if self.assemble is None:
            vals = "".join(e + ", " for e in exprs) + "*_sfx"
        else:
            vals = "*_asm([" + ", ".join(exprs) + "])"
        if build is None:
            allg = gs
            lines = ["def fast(m):"]
            ret = f" return ({vals},)"
        else:
            allg = ["h0", "h1", "h2", "h3", "h4", "h5", *gs]
            lines = ["def fast(m, lineno):"]
            ret = (" return _build(h0, int(h1), int(h3), h5, lineno, "
                   f"None if h2 is None else _tgid(h2), h4, {vals})")
        lines.append(f" {', '.join(allg)}, = m.groups()")
        lines.append(ret)
        exec("\n".join(lines), ns)  # noqa: S102 - generated from the fixed templates above
        return ns["fast"]  # type: ignore[no-any-return]

    def parse(self, m: re.Match[str]) -> tuple[Any, ...]:
        try:
            return self.fast(m)  # type: ignore[no-any-return]
        except _FieldError:
            raise
        except Exception:
            vals = self.convert(m)  # raises _FieldError naming the field
            if self.assemble is None:
                return (*vals, *self.suffix)
            return self.assemble(vals)

    def convert(self, m: re.Match[str]) -> list[Any]:
        vals: list[Any] = []
        try:
            for conv, g in zip(self.convs, m.groups()):
                vals.append(conv(g))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _FieldError(self.names[len(vals)], f"bad value: {exc}") from None
        return vals

    def diagnose(self, body: str) -> tuple[int, str, str]:
        """(progress, field, reason) for a body that does not match."""
        if self._prefixes is None:
            self._prefixes = [
                re.compile(self._pattern(self.tokens[: i + 1]), re.ASCII)
                for i in range(len(self.tokens))
            ]
        names = [n for n, k in self.tokens if k is not None]
        last_field = names[0] if names else "text"
        prev_field: str | None = None
        end = 0
        for i, rx in enumerate(self._prefixes):
            tok, kind = self.tokens[i]
            m = rx.match(body)
            if m is None:
                if kind is not None:
                    return i, tok, f"expected {kind} value (format {self.text!r})"
                if prev_field is not None and body[end:end + 1] != tok[:1]:
                    # the previous field ran into unexpected characters
                    return i, prev_field, f"bad {prev_field} value (format {self.text!r})"
                nxt = next((n for n, k in self.tokens[i:] if k is not None), last_field)
                return i, nxt, f"expected {tok!r} (format {self.text!r})"
            end = m.end()
            if kind is not None:
                last_field = prev_field = tok
            else:
                prev_field = None
        return len(self.tokens), last_field, f"unexpected trailing text (format {self.text!r})"


# ---------------------------------------------------------------------------------------
# Event table
# ---------------------------------------------------------------------------------------


def _same(style: str | None = None) -> tuple[Any, ...]:
    return () if style is None else (style,)


def _page_kernel(v: list[Any]) -> tuple[Any, ...]:
    gen, gfn, level, gpte, quad, direct, access, invalid, nonx, noad, root, unsync = v[:12]
    role = (level | (gpte == 4) << 4 | quad << 5 | direct << 7 | access << 8 | invalid << 11
            | (not nonx) << 12 | noad << 16)
    out = (gen, gfn, role, root, unsync, "kernel")
    return out + (v[12],) if len(v) > 12 else out


def _page_plugin(v: list[Any], has_gfn: bool) -> tuple[Any, ...]:
    created = gfn = None
    if has_gfn:
        created, gfn = v[0], v[1]
        v = v[2:]
    level, quad, direct, access, invalid, nopae, nonx, nowp, smep, smap, smm, root, unsync = v
    role = (level | (not nopae) << 4 | quad << 5 | direct << 7 | access << 8 | invalid << 11
            | (not nonx) << 12 | (not nowp) << 13 | smep << 14 | smap << 15 | smm << 24)
    out = (None, gfn, role, root, unsync, "plugin")
    return out + (created,) if has_gfn else out


def _page_raw(v: list[Any]) -> tuple[Any, ...]:
    gen, gfn, role, root, unsync = v[:5]
    out = (gen, gfn, role, root, bool(unsync), "raw")
    return out + (bool(v[5]),) if len(v) > 5 else out


def _set_spte(v: list[Any]) -> tuple[Any, ...]:
    gfn, spte, r, w, x, u, level, sptep = v
    if w != bool(spte & 2):
        raise _FieldError("w", "writable flag disagrees with spte bit 1 (PT_WRITABLE_MASK)")
    return (gfn, spte, level, sptep, r, w, x, u)


def _fast_pf(v: list[Any]) -> tuple[Any, ...]:
    if v[6] and v[7]:
        raise _FieldError("fixed", "spurious and fixed cannot both be 1")
    return tuple(v)


def _check_mmio(v: list[Any]) -> tuple[Any, ...]:
    spte, kvm_gen, spte_gen, valid = v
    if valid != (kvm_gen == spte_gen):
        raise _FieldError("valid", "valid must equal (kvm_gen == spte_gen)")
    return (spte, kvm_gen, spte_gen)


def _entry_kernel(v: list[Any]) -> tuple[Any, ...]:
    return (v[0], v[1], v[2], None, "kernel")


def _entry_plugin(v: list[Any]) -> tuple[Any, ...]:
    return (v[0], v[1], False, v[2], "plugin")


def _exit_kernel(v: list[Any]) -> tuple[Any, ...]:
    return (*v, None, "kernel")


def _exit_plugin(v: list[Any]) -> tuple[Any, ...]:
    reason, rip, sym, info1, info2 = v
    return (None, reason, rip, info1, info2, None, None, sym, "plugin")


_PAGE_K = ("sp gen {gen:u8} gfn {gfn:x} l{level:u4} {gpte_bytes:gpte}-byte q{quadrant:u2}"
           "{direct:direct} {access:access}{invalid:invalid} {nxe:bang}nxe {ad:bang}ad "
           "root {root_count:u32} {unsync:sync}")
_PAGE_P = ("{level:u4} q{quadrant:u2}{direct:direct} {access:access}{invalid:invalid} "
           "{pae:bang}pae {nxe:bang}nxe {wp:bang}wp{smep:smep}{smap:smap}{smm:smm} "
           "root {root_count:u32} {unsync:sync}")
_PAGE_R = ("[FAILED TO PARSE] mmu_valid_gen={mmu_valid_gen:n8} gfn={gfn:n64} role={role:n32} "
           "root_count={root_count:n32} unsync={unsync:nb}")


def _page_templates(get_page: bool) -> list[_Template]:
    if get_page:
        return [
            _Template(_PAGE_K + " {created:created}", "kernel", _page_kernel),
            _Template("{created:created} sp gfn {gfn:x} " + _PAGE_P, "plugin",
                      lambda v: _page_plugin(v, True)),
            _Template(_PAGE_R + " created={created:nb}", "raw", _page_raw),
        ]
    return [
        _Template(_PAGE_K, "kernel", _page_kernel),
        _Template(_PAGE_P, "plugin", lambda v: _page_plugin(v, False)),
        _Template(_PAGE_R, "raw", _page_raw),
    ]


_TEMPLATES: dict[type[TraceRecord], list[_Template]] = {
    KvmPageFault: [
        _Template("vcpu {vcpu_id:u32} rip 0x{guest_rip:x} address 0x{fault_address:x16} "
                  "error_code 0x{error_code:x}", "kernel", _same("kernel")),
        _Template("vcpu {vcpu_id:u32} rip 0x{guest_rip:x} address 0x{fault_address:x} "
                  "error_code {error_code:x32}", "v2", _same("v2")),
        _Template("address {fault_address:x} error_code {error_code:x32}", "v1",
                  lambda v: (None, None, v[0], v[1], "v1")),
    ],
    KvmEntry: [
        _Template("vcpu {vcpu_id:u32}, rip 0x{rip:x}{immediate_exit:imm}", "kernel", _entry_kernel),
        _Template("vcpu {vcpu_id:u32} rip 0x{rip:x}{rip_sym:sym}", "plugin", _entry_plugin),
    ],
    KvmExit: [
        _Template("vcpu {vcpu_id:u32} reason {exit_reason:reason} rip 0x{guest_rip:x} "
                  "info1 0x{info1:x16} info2 0x{info2:x16} intr_info 0x{intr_info:x08} "
                  "error_code 0x{error_code:x08}", "kernel", _exit_kernel),
        _Template("reason {exit_reason:reason} rip 0x{guest_rip:x}{rip_sym:sym} "
                  "info {info1:x} {info2:x}", "plugin", _exit_plugin),
    ],
    KvmMmuSpteRequested: [
        _Template("gfn {gfn:x} pfn {pfn:x} level {level:u8}", "kernel", _same()),
    ],
    KvmMmuSetSpte: [
        _Template("gfn {gfn:x} spte {spte:x} ({r:r}{w:w}{x:xf}{u:u}) level {level:u8} "
                  "at {sptep:x}", "kernel", _set_spte),
    ],
    KvmTdpMmuSpteChanged: [
        _Template("as id {as_id:u8} gfn {gfn:x} level {level:u8} old_spte {old_spte:x} "
                  "new_spte {new_spte:x}", "kernel", _same()),
    ],
    KvmMmuSplitHugePage: [
        _Template("gfn {gfn:x} spte {spte:x} level {level:d32} errno {errno:d32}", "kernel", _same()),
    ],
    KvmMmuGetPage: _page_templates(True),
    KvmMmuPrepareZapPage: _page_templates(False),
    KvmMmuSyncPage: _page_templates(False),
    KvmMmuUnsyncPage: _page_templates(False),
    FastPageFault: [
        _Template("vcpu {vcpu_id:d32} gva {cr2_or_gpa:x} error_code {error_code:pferr} "
                  "sptep {sptep:ptr} old {old_spte:xpfx} new {new_spte:x} "
                  "spurious {spurious:b01} fixed {fixed:b01}", "kernel", _fast_pf),
    ],
    MarkMmioSpte: [
        _Template("sptep:{sptep:ptr} gfn {gfn:x} access {access:x32} gen {gen:x32}", "kernel", _same()),
    ],
    HandleMmioPageFault: [
        _Template("addr:{addr:x} gfn {gfn:x} access {access:x32}", "kernel", _same()),
    ],
    CheckMmioSpte: [
        _Template("spte {spte:x} kvm_gen {kvm_gen:x32} spte-gen {spte_gen:x32} valid {valid:b01}",
                  "kernel", _check_mmio),
    ],
    KvmMmuZapAllFast: [
        _Template("kvm-mmu-valid-gen {mmu_valid_gen:u8} used_pages {mmu_used_pages:x32}",
                  "kernel", _same()),
    ],
}

#: Names of the events this parser decodes.
SUPPORTED_EVENTS: frozenset[str] = frozenset(EVENT_CLASSES)


def _make_builder(cls: type[TraceRecord]) -> Callable[..., TraceRecord]:
    """A fast positional constructor for a frozen slotted dataclass (bypasses the
    generated ``__init__``, which costs one ``object.__setattr__`` call per field; the
    result is indistinguishable from a normally constructed instance)."""
    names = [f.name for f in dataclasses.fields(cls)]
    setters = [getattr(cls, n).__set__ for n in names]
    params = ", ".join(names)
    src = [f"def factory(_new, _cls, {', '.join('_s_' + n for n in names)}):",
           f" def build({params}):",
           "  o = _new(_cls)"]
    src += [f"  _s_{n}(o, {n})" for n in names]
    src += ["  return o", " return build"]
    ns: dict[str, Any] = {}
    exec("\n".join(src), ns)  # noqa: S102 - generated from dataclass field names only
    return ns["factory"](object.__new__, cls, *setters)  # type: ignore[no-any-return]


def _gen_fast(cls: type[TraceRecord], templates: list[_Template]) -> tuple[Any, Any]:
    """Generate the fast path of one event (all its templates, in order, as the reference
    tries them: the first whose regex matches decides; if its conversion fails the line
    goes to the reference path):

    * ``record(line, j, hdr, lineno) -> record | None`` (None: use the reference path);
    * ``make_push(handler, sink, events) -> (push, fold)``:
      ``push(line, j, hdr, lineno) -> bool`` on success counts the event and calls
      ``handler(line, lineno, hdr, timestamp, *event_fields)`` (only the fields named in
      ``handler.fields`` when it has that attribute, see :func:`wants`) or, when
      ``handler`` is None, ``sink(record, line)``, and returns True; it returns False
      (nothing counted or called) when the reference path must decide.  Exceptions of
      the handler or the sink propagate.  The count goes to ``events`` when ``fold()``
      is called (the key is inserted at the first push, keeping the dict's first-seen
      order).

    ``hdr`` is ``(comm, pid, cpu, tgid, flags)`` (:meth:`TraceParser._header`)."""
    names = [f.name for f in dataclasses.fields(cls)]
    ns: dict[str, Any] = {"_ACCESS": _ACCESS, "_SMALL": _SMALL, "_new": object.__new__,
                          "_cls": cls, "_name": cls.EVENT, "_U32C": _KINDS["u32"][1]}
    for i, n in enumerate(names):
        ns[f"_s{i}"] = getattr(cls, n).__set__
    hdr_vals = ["comm", "pid", "cpu", "ts", "lineno", "tgid", "flags"]
    for i, t in enumerate(templates):
        t.bind_tail(cls, ns, i)
    frags = [t.tail_source(cls, i, None) for i, t in enumerate(templates)]
    ev_names = names[len(_HEADER_FIELDS):]

    def build(vals: list[str], ind: str) -> list[str]:
        return [ind + "comm, pid, cpu, tgid, flags = hdr", ind + "o = _new(_cls)"] + [
            f"{ind}_s{i}(o, {v})" for i, v in enumerate(hdr_vals + vals)]

    rec = ["def record(line, j, hdr, lineno):"]
    # ``n`` counts the pushed lines; ``fold()`` adds it to ``events`` (the key is inserted
    # at the first one, so the dict keeps the first-seen order of iterating)
    head = ["def make_push(_h, _sink, _events):", " n = 0",
            " def push(line, j, hdr, lineno):", "  nonlocal n"]
    count = ["   if not n:", "    _events.setdefault(_name, 0)", "   n += 1"]
    tail = ["  return False", " def fold():", "  nonlocal n", "  if n:",
            "   _events[_name] += n", "   n = 0", " return push, fold"]
    push_r = list(head)
    for i, fr in enumerate(frags):
        conv, vals = fr["convert"], fr["values"]
        rec += [f" m = _m{i}(line, j)", " if m is not None:", "  try:",
                *("   " + c for c in conv), *build(vals, "   "),
                "  except Exception:", "   return None", "  return o"]
        push_r += [f"  m = _m{i}(line, j)", "  if m is not None:", "   try:",
                   *("    " + c for c in conv), *build(vals, "    "),
                   "   except Exception:", "    return False",
                   *count, "   _sink(o, line)", "   return True"]
    rec.append(" return None")
    exec("\n".join(rec), ns)  # noqa: S102 - generated from the fixed templates above
    exec("\n".join(push_r + tail), ns)  # noqa: S102
    make_r = ns["make_push"]
    make_h: dict[tuple[int, ...] | None, Callable[..., Any]] = {}  # by the fields wanted

    def gen_h(wanted: tuple[int, ...] | None) -> Callable[..., Any]:
        push_h = list(head)
        for i, t in enumerate(templates):
            fr = t.tail_source(cls, i, wanted)
            push_h += [f"  m = _m{i}(line, j)", "  if m is not None:", "   try:",
                       *("    " + c for c in fr["convert"]),
                       "   except Exception:", "    return False",
                       *count, f"   _h(line, lineno, hdr, ts, {', '.join(fr['values'])})",
                       "   return True"]
        ns_h = dict(ns)
        exec("\n".join(push_h + tail), ns_h)  # noqa: S102
        return ns_h["make_push"]  # type: ignore[no-any-return]

    def make_push(handler: Callable[..., Any] | None, sink: Callable[[TraceRecord, str], Any],
                  events: dict[str, int]) -> tuple[Callable[..., bool], Callable[[], None]]:
        if handler is None:
            return make_r(handler, sink, events)  # type: ignore[no-any-return]
        fields = getattr(handler, "fields", None)
        wanted = None if fields is None else tuple(ev_names.index(f) for f in fields)
        if wanted not in make_h:
            make_h[wanted] = gen_h(wanted)
        return make_h[wanted](handler, sink, events)  # type: ignore[no-any-return]

    return ns["record"], make_push


def wants(*fields: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a :meth:`TraceParser._drive` handler as taking only these event fields (in
    this order), e.g. ``@wants("gfn", "level")``: the others are not passed, and not
    even converted when their conversion cannot fail."""
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.fields = fields  # type: ignore[attr-defined]
        return fn
    return mark


def _bind_event(cls: type[TraceRecord]) -> tuple[Any, ...]:
    """``(name, fast, templates, record, make_push)``: ``fast`` are the reference
    whole-line (regex, converter) pairs in template order; ``record``/``make_push`` the
    fast path (:func:`_gen_fast`)."""
    build = _make_builder(cls)
    templates = _TEMPLATES[cls]
    for t in templates:
        t.bind(cls.EVENT, build)
    fast = tuple((t.line_regex.fullmatch, t.line_fast) for t in templates)  # type: ignore[union-attr]
    return (cls.EVENT, fast, templates, *_gen_fast(cls, templates))


#: Bound events by name, filled by :func:`_event` when a trace first shows one.
_EVENTS: dict[str, tuple[Any, ...]] = {}
_BUILDERS: dict[str, Callable[..., TraceRecord]] = {}


def _event(name: str) -> tuple[Any, ...]:
    """The bound entry of a supported event (:func:`_bind_event`, once)."""
    ent = _EVENTS.get(name)
    if ent is None:
        cls = EVENT_CLASSES[name]
        ent = _EVENTS[name] = _bind_event(cls)
        _BUILDERS[name] = _make_builder(cls)
    return ent


class _Table(dict):  # type: ignore[type-arg]
    """A parser's entries by event name, made on first sight of an event (``make``) and
    only for the ``wanted`` ones.  Looked up with the plain ``dict.get``; on a miss,
    :meth:`bind`."""

    def __init__(self, wanted: frozenset[str], make: Callable[[str], tuple[Any, ...]]) -> None:
        super().__init__()
        self.wanted = wanted
        self.make = make

    def bind(self, name: str) -> tuple[Any, ...] | None:
        if name not in self.wanted:
            return None
        ent = self[name] = self.make(name)
        return ent


def _parse_body(templates: list[_Template], body: str) -> tuple[Any, ...]:
    for t in templates:
        m = t.regex.fullmatch(body)
        if m is not None:
            return t.parse(m)
    best = max((t.diagnose(body) for t in templates), key=lambda d: d[0])
    raise _FieldError(best[1], best[2])


# ---------------------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------------------

_HDR_RE = re.compile(_HDR_PATTERN, re.ASCII)
_HDR_PREFIX_RE = re.compile(_HDR_PREFIX, re.ASCII)
#: Parsed header prefixes kept per parser (distinct task/cpu/flags combinations).
_HCACHE_MAX = 4096
_LOST_RE = re.compile(r"CPU:?\s*\d+\s*\[LOST (\d+) EVENTS\]", re.ASCII)
_DIGITS = frozenset("0123456789")


# ---------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------


class TraceParser:
    """Iterate the records of a trace, in file order, in constant memory.

    ``source`` is a path (str/PathLike, opened lazily in text mode), a text or binary file
    object, or any iterable of lines.  ``stats`` is filled while iterating.
    """

    def __init__(self, source: str | os.PathLike[str] | Iterable[str] | Iterable[bytes] | io.IOBase,
                 *, skip_bad: bool = False, max_bad_examples: int = 10,
                 filename: str | None = None, events: Iterable[str] | None = None) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.max_bad_examples = max_bad_examples
        if filename is None:
            if isinstance(source, (str, os.PathLike)):
                filename = os.fspath(source)
            else:
                filename = str(getattr(source, "name", "<stream>"))
        self.filename = filename
        self.stats = TraceStats()
        wanted = SUPPORTED_EVENTS if events is None else frozenset(events)
        unknown = wanted - SUPPORTED_EVENTS
        if unknown:
            raise ValueError(f"unsupported events: {sorted(unknown)}")
        self._table = _Table(wanted, _event)
        self._hcache: dict[str, tuple[Any, ...] | bool] = {}
        #: use the reference loop (no fast path); for tests and comparisons
        self._use_reference = False

    def __iter__(self) -> Iterator[TraceRecord]:
        src = self.source
        if isinstance(src, (str, os.PathLike)):
            with open(src, encoding="utf-8", errors="replace", newline=None) as f:
                yield from self._run(f)
        else:
            yield from self._run(src)  # type: ignore[arg-type]

    # The hot loops: ``_run`` yields records, ``_drive`` calls handlers.  Each is kept in
    # one function with local aliases on purpose; both classify lines exactly like
    # ``_run_reference``.
    #
    # Fast path.  When the first ": " of a line follows a digit and the text up to the next
    # ":" names one of our events, the header up to the blank before the timestamp,
    # ``line[:j]``, is looked up in a bounded cache of parsed headers (:meth:`_header`),
    # and one regex matches timestamp + ``: <event>:`` + body from ``j`` (``tail_regex``).
    # That is exactly the whole-line regex's result: the timestamp has no blank and the
    # header ends with one, so the two meet at ``j``; and no other ": " precedes this one,
    # so a differently split comm cannot match first.  Whenever the fast path does not
    # produce a value (cache says the header is bad, no tail regex matches, a converter
    # raises), the line goes to :meth:`_reference`, i.e. the unchanged reference path,
    # which builds the record or reports the error exactly as before.

    def _run(self, lines: Iterable[Any]) -> Iterator[TraceRecord]:
        if self._use_reference:
            yield from self._run_reference(lines)
            return
        stats = self.stats
        table = self._table
        events = stats.events
        locate = self._locate
        hcache = self._hcache
        header = self._header
        reference = self._reference
        lineno = 0
        other = 0
        try:
            for line in lines:
                lineno += 1
                loc = locate(line, table)
                if loc.__class__ is not tuple:
                    other += loc
                    continue
                line, k, e, ent, first = loc
                rec = None
                if first:
                    j = line.rfind(" ", 0, k) + 1
                    pre = line[:j]
                    hdr = hcache.get(pre)
                    if hdr is None:
                        hdr = header(pre)
                    if hdr:
                        rec = ent[3](line, j, hdr, lineno)
                if rec is None:
                    rec = reference(line, k, e, lineno, ent)
                    if rec is None:
                        continue
                name = ent[0]
                events[name] = events.get(name, 0) + 1
                yield rec
        finally:
            stats.lines += lineno
            stats.skipped_other += other

    def _drive(self, lines: Iterable[Any], sink: Callable[[TraceRecord, str], Any],
               handlers: dict[str, Callable[..., Any]]) -> None:
        """Parse ``lines`` as iterating would, but push instead of yielding: a line of an
        event in ``handlers`` that takes the fast path is passed as
        ``handlers[event](line, lineno, hdr, timestamp, *event_fields)`` (``hdr`` =
        ``(comm, pid, cpu, tgid, flags)``; the event fields in the record's field order)
        without building a record; every other record goes to ``sink(record, line)``.
        Statistics, errors and ``skip_bad`` are exactly those of iterating, except that
        the fast path's share of ``stats.events`` is added when the run ends (as
        ``lines`` and ``skipped_other`` are), not live."""
        stats = self.stats
        events = stats.events
        def entry(name: str) -> tuple[Any, ...]:
            ent = _event(name)
            return (*ent, *ent[4](handlers.get(name), sink, events))

        table = _Table(self._table.wanted, entry)  # name -> (*entry, push, fold)
        bind = table.bind
        locate = self._locate
        hcache = self._hcache
        header = self._header
        reference = self._reference
        lineno = 0
        other = 0
        digits = _DIGITS
        try:
            for line in lines:
                lineno += 1
                # _locate inlined for its common outcomes: a text line whose first ": "
                # follows a digit, with the event name up to the next ":" (ours or not)
                k = line.find(": ") if line.__class__ is str else -1
                ent = None
                if k > 0 and line[k - 1] in digits:
                    e = line.find(":", k + 2)
                    if e < 0:
                        other += 1
                        continue
                    name = line[k + 2:e]
                    ent = table.get(name)
                    if ent is None:
                        ent = bind(name)
                        if ent is None and " " not in name:
                            other += 1
                            continue
                    first = True
                if ent is None:
                    loc = locate(line, table)
                    if loc.__class__ is not tuple:
                        other += loc
                        continue
                    line, k, e, ent, first = loc
                if first:
                    j = line.rfind(" ", 0, k) + 1
                    pre = line[:j]
                    hdr = hcache.get(pre)
                    if hdr is None:
                        hdr = header(pre)
                    if hdr and ent[5](line, j, hdr, lineno):
                        continue
                rec = reference(line, k, e, lineno, ent)
                if rec is None:
                    continue
                name = ent[0]
                events[name] = events.get(name, 0) + 1
                sink(rec, line)
        finally:
            stats.lines += lineno
            stats.skipped_other += other
            for ent in table.values():
                ent[6]()

    def _locate(self, line: Any, table: _Table) -> tuple[Any, ...] | int:
        """Find the event of one line for the fast loops: ``(line, k, e, entry, first)``
        (``k``/``e`` bound the event name, ``first`` says the first ``": "`` ended the
        header so the header cache applies), or 1 for another event, 0 for a line with no
        event (comments, headers)."""
        if line.__class__ is not str:
            line = line.decode("utf-8", "replace") if isinstance(line, (bytes, bytearray)) else str(line)
        k = line.find(": ")
        first = k > 0 and line[k - 1] in _DIGITS
        if not first:
            k = self._slow_locate(line)
            if k < 0:
                return 0
        e = line.find(":", k + 2)
        if e < 0:
            return 1
        name = line[k + 2:e]
        ent = table.get(name) or table.bind(name)
        if ent is None and (not name or " " in name):
            # No event is named that (empty, or with a space): the ': ' found is inside
            # the task name (e.g. "0: :"); look further
            found = self._next_event(line, k)
            if found is not None:
                k, e = found
                ent = table.get(line[k + 2:e]) or table.bind(line[k + 2:e])
                first = False
        if ent is None:
            return 1
        return line, k, e, ent, first

    def _header(self, pre: str) -> tuple[Any, ...] | bool:
        """Parse (and cache) a header prefix: ``(comm, pid, cpu, tgid, flags)``, or False
        when it does not match.  The cache is emptied when full (memory stays flat)."""
        m = _HDR_PREFIX_RE.fullmatch(pre)
        if m is None:
            hdr: tuple[Any, ...] | bool = False
        else:
            comm, pid, tgid, cpu, flags = m.groups()
            hdr = (comm, int(pid), int(cpu), None if tgid is None else _tgid(tgid), flags)
        cache = self._hcache
        if len(cache) >= _HCACHE_MAX:
            cache.clear()
        cache[pre] = hdr
        return hdr

    def _reference(self, line: str, k: int, e: int, lineno: int,
                   ent: tuple[Any, ...]) -> TraceRecord | None:
        """The reference path for one event line: the record, or None for a bad line
        counted with ``skip_bad`` (else :class:`TraceParseError` is raised)."""
        name, fast, templates = ent[:3]
        rec = None
        try:
            for match, conv in fast:
                m = match(line)
                if m is not None:
                    rec = conv(m, lineno)
                    break
        except Exception:
            rec = None
        if rec is None:
            # Slow path: find and name the offending field (or build the record the
            # careful way if the whole-line regex was merely too strict).
            try:
                rec = self._slow_record(line, k, e, lineno, name, templates)
            except _FieldError as exc:
                self._bad(self.filename, lineno, line, exc.field, exc.reason, name)
                return None
            except Exception as exc:  # safety net: never leak anything else
                self._bad(self.filename, lineno, line, "?", f"internal error: {exc!r}", name)
                return None
        return rec

    # The reference loop (the parser before the fast path), kept to check the fast path
    # against: ``_use_reference = True`` makes iteration use it.  It shares only event
    # location and the per-line reference decoder with the fast loops: no header cache,
    # no generated constructors.
    def _run_reference(self, lines: Iterable[Any]) -> Iterator[TraceRecord]:
        stats = self.stats
        table = self._table
        events = stats.events
        lineno = 0
        other = 0
        try:
            for line in lines:
                lineno += 1
                loc = self._locate(line, table)
                if loc.__class__ is not tuple:
                    other += loc
                    continue
                line, k, e, ent, _ = loc
                rec = self._reference(line, k, e, lineno, ent)
                if rec is None:
                    continue
                events[ent[0]] = events.get(ent[0], 0) + 1
                yield rec
        finally:
            stats.lines += lineno
            stats.skipped_other += other

    @staticmethod
    def _slow_record(line: str, k: int, e: int, lineno: int, name: str,
                     templates: list[_Template]) -> TraceRecord:
        h = _HDR_RE.fullmatch(line, 0, k)
        if h is None:
            raise _FieldError("header", "expected '<comm>-<pid> [(<tgid>)] [<cpu>] [<flags>] <timestamp>'")
        comm, pid, tgid, cpu, flags, ts = h.groups()
        body = line[e + 1:].strip(" \t\r\n\x00")
        vals = _parse_body(templates, body)
        build = _BUILDERS[name]
        return build(comm, int(pid), int(cpu), ts, lineno,
                     None if tgid is None else _tgid(tgid), flags, *vals)

    def _slow_locate(self, line: str) -> int:
        """Classify a line the fast path could not; return the index of the ': ' after the
        timestamp, or -1 when the line is not an event line (and count it)."""
        s = line.strip()
        if not s or s[0] == "#":
            self.stats.skipped_comments += 1
            return -1
        m = _LOST_RE.search(s)
        if m is not None and s.startswith("CPU"):
            self.stats.lost_events += int(m.group(1))
            self.stats.skipped_comments += 1
            return -1
        k = line.find(": ")
        while k >= 0:
            if k > 0 and line[k - 1] in _DIGITS:
                return k
            k = line.find(": ", k + 1)
        self.stats.skipped_comments += 1
        return -1

    @staticmethod
    def _next_event(line: str, k: int) -> tuple[int, int] | None:
        """The next (k, e) after ``k`` where ``line[k+2:e]`` is a plausible event name."""
        while True:
            k = line.find(": ", k + 1)
            if k < 0:
                return None
            if line[k - 1] not in _DIGITS:
                continue
            e = line.find(":", k + 2)
            if e < 0:
                return None
            if e > k + 2 and " " not in line[k + 2:e]:
                return k, e

    def _bad(self, fname: str, lineno: int, line: str, fld: str, reason: str, event: str) -> None:
        text = line.rstrip("\r\n")
        if not self.skip_bad:
            raise TraceParseError(fname, lineno, text, fld, reason, event)
        st = self.stats
        st.bad_lines += 1
        if len(st.bad_examples) < self.max_bad_examples:
            st.bad_examples.append(BadLine(fname, lineno, text, fld, reason))


def parse_trace(source: str | os.PathLike[str] | Iterable[str] | Iterable[bytes] | io.IOBase,
                *, skip_bad: bool = False, max_bad_examples: int = 10,
                filename: str | None = None, stats: TraceStats | None = None,
                events: Iterable[str] | None = None) -> Iterator[TraceRecord]:
    """Generator of records.  Pass a :class:`TraceStats` as ``stats`` to get the counters
    (it is updated in place while iterating)."""
    p = TraceParser(source, skip_bad=skip_bad, max_bad_examples=max_bad_examples,
                    filename=filename, events=events)
    if stats is not None:
        p.stats = stats
    return iter(p)


def parse_line(line: str, *, filename: str = "<line>", lineno: int = 1) -> TraceRecord | None:
    """Parse one line: a record, or None for a comment/other-event line; raises
    :class:`TraceParseError` for a bad line of one of our events."""
    p = TraceParser([line], filename=filename)
    for rec in p._run([line]):
        if lineno != 1:
            rec = dataclasses.replace(rec, lineno=lineno)
        return rec
    return None
