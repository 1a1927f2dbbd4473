"""Property tests: parse(format(x)) == x, and fuzzing of valid lines."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trace_strategies import records

from tdpsim.trace import (
    TraceParseError,
    TraceParser,
    TraceRecord,
    format_line,
    format_record,
    parse_line,
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(records, st.sampled_from(["trace-cmd", "ftrace"]))
def test_roundtrip(rec: TraceRecord, style: str) -> None:
    line = format_line(rec, style=style)
    back = parse_line(line)
    assert back == rec
    assert type(back) is type(rec)
    # every field, including the ones excluded from equality
    assert dataclasses.astuple(back) == dataclasses.astuple(dataclasses.replace(rec, lineno=1))
    # the text is canonical: formatting the parsed record gives the same line
    assert format_line(back, style=style) == line
    assert format_record(back) == format_record(rec)


@SETTINGS
@given(st.lists(records, min_size=1, max_size=20))
def test_roundtrip_stream_linenos(recs: list[TraceRecord]) -> None:
    text = "# tracer: nop\n#\n" + "".join(format_line(r) + "\n" for r in recs)
    p = TraceParser(text.splitlines(keepends=True))
    out = list(p)
    assert out == recs
    assert [r.lineno for r in out] == list(range(3, 3 + len(recs)))
    assert p.stats.lines == len(recs) + 2
    assert p.stats.skipped_comments == 2
    assert p.stats.parsed == len(recs)


# ---------------------------------------------------------------------------------------
# Fuzzing: mutated valid lines raise only TraceParseError (and nothing with skip_bad).
# ---------------------------------------------------------------------------------------

_CHARS = st.sampled_from(list("0123456789abcdefx -:|()[]!.,\t\x00\r_") + ["é", "\u00b2", "\u0663"])


@st.composite
def mutated_lines(draw) -> str:
    line = format_line(draw(records), style=draw(st.sampled_from(["trace-cmd", "ftrace"])))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "truncate", "swap", "dup"]))
        n = len(line)
        if n == 0:
            break
        i = draw(st.integers(0, n - 1))
        if op == "delete":
            j = draw(st.integers(i, min(n, i + 8)))
            line = line[:i] + line[j:]
        elif op == "insert":
            line = line[:i] + draw(st.text(_CHARS, min_size=1, max_size=4)) + line[i:]
        elif op == "replace":
            line = line[:i] + draw(_CHARS) + line[i + 1:]
        elif op == "truncate":
            line = line[:i]
        elif op == "swap":
            words = line.split(" ")
            if len(words) > 2:
                a = draw(st.integers(0, len(words) - 1))
                b = draw(st.integers(0, len(words) - 1))
                words[a], words[b] = words[b], words[a]
                line = " ".join(words)
        else:  # duplicate a chunk (e.g. a field) somewhere else
            j = draw(st.integers(i, min(n, i + 12)))
            k = draw(st.integers(0, n))
            line = line[:k] + line[i:j] + line[k:]
    return line


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated_lines())
def test_fuzz_only_trace_parse_error(line: str) -> None:
    try:
        rec = parse_line(line)
    except TraceParseError as exc:
        assert exc.lineno == 1 and exc.filename == "<line>" and exc.field
        assert exc.line == line.rstrip("\r\n")
        return
    if rec is not None:
        # whatever was accepted must be a well-formed record that formats and re-parses
        assert parse_line(format_line(rec)) == rec


@FUZZ
@given(st.lists(mutated_lines(), min_size=1, max_size=10))
def test_fuzz_skip_bad_never_raises(lines: list[str]) -> None:
    p = TraceParser(lines, skip_bad=True, max_bad_examples=3)
    out = list(p)
    st_ = p.stats
    assert st_.lines == len(lines)
    assert st_.parsed == len(out)
    assert st_.parsed + st_.bad_lines + st_.skipped_other + st_.skipped_comments == len(lines)
    assert len(st_.bad_examples) == min(3, st_.bad_lines)


@FUZZ
@given(st.text(min_size=0, max_size=200))
def test_fuzz_arbitrary_text(line: str) -> None:
    try:
        parse_line(line)
    except TraceParseError:
        pass


@pytest.mark.parametrize("event", ["kvm_exit", "kvm_mmu_set_spte", "kvm_mmu_get_page"])
@FUZZ
@given(tail=st.text(min_size=0, max_size=120))
def test_fuzz_random_bodies(event: str, tail: str) -> None:
    line = f"  CPU 0/KVM-1 [000] d..1. 1.000001: {event}: {tail}"
    try:
        parse_line(line)
    except TraceParseError as exc:
        assert exc.event == event
