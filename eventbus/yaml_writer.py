"""Plain data (dicts, lists, strings, numbers, booleans, None) as block-style YAML.

Enough for documents such as an AsyncAPI file, without a YAML dependency.
A string is written bare only when no YAML 1.1 or 1.2 reader could take it
for anything else (a number, a boolean, null, a date, an indicator);
otherwise it is double-quoted with JSON escapes, which YAML reads the same.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

# Starts with a letter, '_', '$' or '/', then letters, digits, spaces and a few
# harmless punctuation marks; no ':' or '#', so never a mapping or a comment.
# (\Z, not $: $ also matches before a final newline, and "A\n" must be quoted.)
_BARE = re.compile(r"^[A-Za-z_$/][A-Za-z0-9_$/.() ,'-]*\Z")
# Words that YAML 1.1 (PyYAML and friends) read as booleans or null.
_RESERVED = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})
# Characters YAML does not allow unescaped, or reads as line breaks (NEL, LS, PS).
_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def to_yaml(data: Any) -> str:
    """``data`` as a YAML document (ends with a newline)."""
    return "\n".join(_lines(data, 0)) + "\n"


def scalar(value: Any) -> str:
    """One scalar value as YAML text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "." not in text and "e" in text:
            text = text.replace("e", ".0e")  # 1e+16 -> 1.0e+16: YAML 1.1 floats need the dot
        return text
    if isinstance(value, str):
        bare = _BARE.match(value) and value.lower() not in _RESERVED and not value.endswith(" ")
        return value if bare else _quote(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as YAML: only plain data is supported")


def _quote(text: str) -> str:
    """Double-quoted with JSON escapes, and escaped code points for what YAML would not keep as is."""
    quoted = json.dumps(text, ensure_ascii=False)
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)


def _is_container(value: Any) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, (str, bytes)))


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        lines = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"cannot write the key {key!r} as YAML: keys must be strings")
            label = f"{pad}{scalar(key)}:"
            if _is_container(item) and item:
                lines.append(label)
                lines.extend(_lines(item, indent + 2))
            else:
                lines.append(f"{label} {_inline(item)}")
        return lines
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if not value:
            return [pad + "[]"]
        lines = []
        for item in value:
            if _is_container(item) and item:
                nested = _lines(item, indent + 2)
                # The first line of the item goes after the dash: "- key: value".
                lines.append(f"{pad}- {nested[0][indent + 2 :]}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_inline(item)}")
        return lines
    return [pad + scalar(value)]


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return "[]"
    return scalar(value)
