"""Parsing a server's JSON without letting its shape raise anything but ValueError.

json.loads raises RecursionError for deep nesting and ValueError for integers over 4300 digits, and a
parsed body nested a few hundred levels deep can still break json.dumps later (when a result is saved to
the outbox). The sessions API's bodies nest three levels; anything beyond MAX_JSON_DEPTH is refused.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 32


def parse_json(content: bytes) -> Any:
    """The decoded JSON value; ValueError for anything that is not JSON of bounded depth."""
    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON ({type(exc).__name__}: {str(exc)[:100]})") from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Iterative, so checking depth cannot itself recurse too deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


__all__ = ["MAX_JSON_DEPTH", "parse_json"]
