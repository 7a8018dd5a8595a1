"""File names where only text goes, written so that every name reads back exactly. No TensorFlow.

Linux file names are bytes: any byte but NUL and "/", so also tabs, line breaks and bytes that
are not UTF-8 (a Latin-1 "café" from an old share). Python holds those bytes as lone
surrogates (PEP 383, `os.fsdecode`); efx keeps them so wherever it stores a name.

- JSON (`--json`, failures.jsonl): UTF-8 text, with a byte that is not UTF-8 written as the
  escape of its surrogate (`"caf\\udce9.png"`), so the document stays valid UTF-8 and
  `os.fsencode(json.loads(...))` gives the original bytes back.
- Tab-separated lines (`efx similar`, `efx duplicates`): one record per line whatever the name,
  for `cut`, `awk` and Python's `str.splitlines` alike: backslash, tab, line feed and carriage
  return are written `\\\\`, `\\t`, `\\n`, `\\r`; every other control character (and U+0085,
  U+2028, U+2029, which `splitlines` also breaks at) as `\\xNN` per UTF-8 byte, and a byte that
  is not UTF-8 as `\\xNN` (the escapes of Python bytes literals and PostgreSQL's text format);
  `unescape` reads a field back.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from typing import Any

_SURROGATE = re.compile("[\udc80-\udcff]")
_SPECIAL = re.compile("[\\\\\x00-\x1f\x7f\x85\u2028\u2029\udc80-\udcff]")
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def to_json(value: Any, **options: Any) -> str:
    """`json.dumps` that keeps non-ASCII names readable and escapes only what UTF-8 cannot hold."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def escape(name: str) -> str:
    """A name as one tab-separated field on one line (see the module's docstring)."""
    return _SPECIAL.sub(lambda found: _escaped(found.group()), name)


def _escaped(character: str) -> str:
    if character in _ESCAPES:
        return _ESCAPES[character]
    raw = character.encode("utf-8", "surrogateescape")  # a lone surrogate: its original byte
    return "".join(f"\\x{byte:02x}" for byte in raw)


def readable(name: str) -> str:
    """A name as text for people (a web page, a message): UTF-8 as it is, a byte that is not
    UTF-8 as `\\xNN`. For display only: unlike `escape`, not reversible."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unescape(field: str) -> str:
    """The name `escape` wrote: `unescape(escape(name)) == name` for every file name."""
    raw, _ = codecs.escape_decode(field.encode("utf-8", "surrogateescape"))
    return os.fsdecode(raw)
