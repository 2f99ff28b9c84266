"""The caption template setting (evaluate.caption_template): its fields, its default and its parser.

A caption template is plain text with `{field}` placeholders (title, artist, style, genre, date).
A part in square brackets is optional: it is dropped when any field inside it is missing, so
`Music for the painting[ "{title}"][ by {artist}]` reads well with or without a title or artist.
art2mus/evaluation/captions.py fills it from an artwork's metadata."""

from __future__ import annotations

import re
import string

CAPTION_FIELDS = ("title", "artist", "style", "genre", "date")
DEFAULT_TEMPLATE = 'Music for the painting[ "{title}"][ by {artist}][, {style}][, {genre}][, {date}]'
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
