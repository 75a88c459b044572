"""Colours named in config: ``'#rrggbb'`` or a few names, as RGB triples."""

from __future__ import annotations

import re

_HEX = re.compile(r"#?([0-9a-fA-F]{6})")


def parse_colour(text: str) -> tuple[int, int, int]:
    """``'#rrggbb'`` (or ``'white'``/``'black'``) → an RGB triple."""
    named = {"white": "ffffff", "black": "000000", "grey": "808080", "gray": "808080"}
    match = _HEX.fullmatch(named.get(text.strip().lower(), text.strip()))
    if not match:
        raise ValueError(f"colour {text!r} is not '#rrggbb', 'white' or 'black'")
    value = match.group(1)
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))
