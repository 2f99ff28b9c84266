"""Metadata captions for the text-conditioned AudioLDM2 baseline (the paper's comparison).

A caption template is plain text with `{field}` placeholders (title, artist, style, genre, date).
A part in square brackets is optional: it is dropped when any field inside it is missing, so
`Music for the painting[ "{title}"][ by {artist}]` reads well with or without a title or artist.
Field values come from data files: control characters and brackets/braces are removed,
whitespace is collapsed, each value is cut at FIELD_CHARS, and `nan`, `none`, `null`, `unknown`
and empty values count as missing.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Mapping
from typing import Any

CAPTION_FIELDS = ("title", "artist", "style", "genre", "date")
DEFAULT_TEMPLATE = 'Music for the painting[ "{title}"][ by {artist}][, {style}][, {genre}][, {date}]'
FIELD_CHARS = 80
MISSING = {"", "nan", "none", "null", "unknown", "n/a", "na"}
_PART = re.compile(r"\[([^\[\]]*)\]|([^\[\]]+)")


def template_parts(template: str) -> list[tuple[str, bool]]:
    """Split a template into (text, optional) parts; ValueError on bad brackets or unknown fields."""
    if template.count("[") != template.count("]") or re.search(r"\[[^\]]*\[|\][^\[]*\]", template):
        raise ValueError(f"caption template {template!r}: optional parts need matching, unnested [ ]")
    parts = [(match.group(1), True) if match.group(1) is not None else (match.group(2), False)
             for match in _PART.finditer(template)]
    for text, _ in parts:
        for _, field, spec, conversion in string.Formatter().parse(text):
            if field is not None and (field not in CAPTION_FIELDS or spec or conversion):
                raise ValueError(f"caption template {template!r}: unknown placeholder {{{field}}} "
                                 f"(use {', '.join('{' + name + '}' for name in CAPTION_FIELDS)})")
    if not any(field for text, _ in parts for _, field, _, _ in string.Formatter().parse(text) if field):
        raise ValueError(f"caption template {template!r}: no placeholder, every caption would be the same")
    return parts


def clean_field(value: Any) -> str:
    """A metadata value as safe caption text; "" when it is missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = "".join(" " if unicodedata.category(char)[0] in "CZ" else char for char in str(value))
    text = re.sub(r"[\[\]{}<>]", "", text)
    text = " ".join(text.split())[:FIELD_CHARS].strip()
    return "" if text.lower() in MISSING else text


def metadata_caption(metadata: Mapping[str, Any], template: str = DEFAULT_TEMPLATE) -> str:
    """The caption of one artwork: the template filled from its metadata, optional parts dropped when missing."""
    values = {name: clean_field(metadata.get(name)) for name in CAPTION_FIELDS}
    pieces = []
    for text, optional in template_parts(template):
        fields = [field for _, field, _, _ in string.Formatter().parse(text) if field]
        if optional and not all(values[field] for field in fields):
            continue
        pieces.append(text.format(**values))
    return " ".join("".join(pieces).split())
