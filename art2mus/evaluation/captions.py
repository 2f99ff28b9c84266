"""Metadata captions for the text-conditioned AudioLDM2 baseline (the paper's comparison).

The template (art2mus/config/captions.py: `{field}` placeholders, optional parts in square brackets)
is filled from an artwork's metadata; an optional part is dropped when any field inside it is missing.
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

from art2mus.config.captions import CAPTION_FIELDS, DEFAULT_TEMPLATE, template_parts

FIELD_CHARS = 80
MISSING = {"", "nan", "none", "null", "unknown", "n/a", "na"}


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
