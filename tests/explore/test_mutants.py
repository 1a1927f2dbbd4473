"""The mutation benchmark's planted bugs (``benchmarks/mutants.py``) must stay applicable:
when the model's text moves on, a mutant whose ``old`` no longer matches is reported by the
benchmark as "does not apply" and silently drops out of the kill rate (session 5 found
``lock_attr_check_before_seq`` rotted that way).  Each text must occur exactly once in the
file it patches, and the patched file must still be Python."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from mutants import SETS  # noqa: E402

SRC = ROOT / "src" / "tdpsim"
ALL = [(label, m) for label, ms in SETS.items() for m in ms]


def test_names_are_unique_and_classes_known():
    names = [m["name"] for _, m in ALL]
    assert len(names) == len(set(names))
    assert {m["cls"] for _, m in ALL} <= {"RCU", "TLB", "LOCK", "GUEST", "LOGIC"}


@pytest.mark.parametrize("label,mutant", ALL, ids=[m["name"] for _, m in ALL])
def test_mutant_applies_once_and_parses(label, mutant):
    edits = [(mutant["file"], mutant["old"], mutant["new"])] + mutant.get("also", [])
    texts = {}
    for file, old, new in edits:
        text = texts.get(file, (SRC / file).read_text())
        assert text.count(old) == 1, f"{label}/{mutant['name']}: text not found once in {file}"
        texts[file] = text.replace(old, new)
    for file, text in texts.items():
        ast.parse(text, filename=file)
