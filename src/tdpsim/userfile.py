"""Reading the files a user hands tdpsim (workloads, parameters, scenarios, schedules,
checkpoints): bytes in, text out, or one message that names the file and the line where the
bytes stop being UTF-8 text.  Every loader goes through here so none of them can end in a
``UnicodeDecodeError`` traceback on a binary file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


class NotTextError(ValueError):
    """The file cannot be read, or is not UTF-8 text: ``where`` is ``FILE`` or
    ``FILE:LINE``, ``reason`` what is wrong."""

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}")


def read_user_text(path: str | Path, what: str) -> str:
    """The whole of ``path`` decoded as UTF-8; ``what`` names the kind of file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise NotTextError(str(p), f"cannot read the {what}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise NotTextError(f"{p}:{line}", f"the {what} is not UTF-8 text (byte {e.start} "
                           f"is {data[e.start]:#04x})") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise NotTextError(f"{p}:{line}", f"the {what} is not text (it holds NUL bytes)")
    return text

#: Characters of a user's input quoted in a message (a 10 MB line is not echoed whole).
CLIP = 160


def clip(text: str, limit: int = CLIP) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def clip_repr(value: object, limit: int = CLIP) -> str:
    """``repr(value)``, clipped."""
    return clip(repr(value), limit)


def dotted(loc: tuple) -> str:
    """A pydantic error location as the dotted key the user wrote: ``phases[2].kib``."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for "the key itself was wrong"
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# What pydantic's error types mean, in the words of the hand-written validators
# ("FILE: key: expected ..., got ..."), so moving a validator to pydantic keeps its messages.
_EXPECTED = {
    "missing": "this key (it is required)",
    "bool_type": "true or false", "int_type": "an integer", "int_parsing": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "string_type": "a string", "dict_type": "a table", "model_type": "a table",
    "model_attributes_type": "a table", "list_type": "a list",
}


def _expected(e: dict) -> str:
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"a number {op} {bound}"
    if kind == "string_pattern_mismatch":
        return f"a string matching {ctx.get('pattern')}"
    return e["msg"][0].lower() + e["msg"][1:]


def _fields_at(model: Any, loc: tuple) -> Optional[list[str]]:
    """The field names of the (sub)model a location points into, for "unknown key"."""
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
        inner = [a for a in getattr(model, "__args__", ()) if a is not type(None)]
        if not hasattr(model, "model_fields") and inner:
            model = inner[0]
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields is not None else None


def validation_message(source: str, err: Any, model: Any = None) -> str:
    """The first error of a pydantic ``ValidationError`` as the one line every loader
    gives: ``FILE: dotted.key: expected WHAT, got VALUE``."""
    e = err.errors(include_url=False)[0]
    where = dotted(e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        allowed = _fields_at(model, e["loc"][:-1]) if model is not None else None
        return (f"{source}: {where}: expected a known key"
                + (f" ({', '.join(allowed)})" if allowed else "") + ", not this one")
    got = "" if e["type"] == "missing" else f", got {clip_repr(e.get('input'), 60)}"
    return f"{source}: {where}: expected {_expected(e)}{got}"
