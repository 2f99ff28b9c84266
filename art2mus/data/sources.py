"""What the ArtGraph and FMA readers share: CSV text decoding, safe paths, quarantine rows."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from art2mus.errors import Art2MusError
from art2mus.io import unreadable

REPLACEMENT_CHAR = "\ufffd"


class IngestError(Art2MusError):
    """A source cannot be read at all (missing metadata file, missing required columns)."""


@dataclass(frozen=True)
class Quarantined:
    """One bad input and why it was set aside."""

    source: str
    item: str
    path: str
    reason: str

    def as_row(self) -> dict[str, str]:
        return asdict(self)


def decode_csv_bytes(data: bytes) -> tuple[str, bool]:
    """Decode a metadata file as UTF-8; bad bytes become U+FFFD and the flag says it happened."""
    try:
        return data.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        return data.decode("utf-8-sig", errors="replace"), False


def cut_short(text: str) -> str | None:
    """Why a CSV's text looks cut off mid-record (no final line end, and an open quote or a short last
    record), or None; a cut that falls exactly on a line end cannot be told from a shorter file."""
    if not text or text.endswith(("\n", "\r")):
        return None
    try:
        records = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as error:
        if "unexpected end of data" in str(error):
            return "it ends inside a quoted field, with no final line end"
        return None  # malformed in some other way: the CSV parser says how
    if len(records) > 1 and len(records[-1]) < len(records[0]):
        return (f"its last line has {len(records[-1])} of the header's {len(records[0])} fields "
                "and no line end")
    return None


def lacks_final_line_end(path: Path) -> bool:
    """Whether a non-empty text file's last byte is not a line end (a sign it may have been cut off)."""
    with path.open("rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) not in (b"\n", b"\r")


def read_csv_strings(path: Path, **kwargs) -> tuple[pd.DataFrame, bool]:
    """Read a CSV with every cell as a string ('' for empty); also say whether it was valid UTF-8."""
    if not path.is_file():
        raise IngestError(f"{path}: metadata file not found")
    text, valid = decode_csv_bytes(path.read_bytes())
    cut = cut_short(text)
    if cut is not None:
        raise unreadable(path, cut)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise IngestError(f"{path}: not a readable CSV: {error}") from None
    return frame, valid


def rows_with_bad_text(frame: pd.DataFrame) -> pd.Series:
    """Rows holding a U+FFFD replacement, i.e. bytes that were not valid UTF-8."""
    if frame.empty:
        return pd.Series(False, index=frame.index)
    return frame.apply(lambda row: any(REPLACEMENT_CHAR in str(v) for v in row), axis=1)


def printable_name(name: str) -> str:
    """A file name fit for a table: undecodable bytes shown as escapes, never raising."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def unsafe_path_reason(root: Path, relative: str) -> str | None:
    """Why `relative` must not be opened under `root` (escapes it), or None when it is safe."""
    if not relative or "\x00" in relative:
        return "empty or NUL-containing file name"
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or relative.startswith(("/", "\\")) or ":" in pure.parts[0]:
        return "absolute path escapes the source root"
    if ".." in pure.parts:
        return "path escapes the source root ('..')"
    resolved_root = root.resolve()
    try:
        (root / pure).resolve().relative_to(resolved_root)
    except ValueError:
        return "symlink escapes the source root"
    return None


def list_files(directory: Path) -> list[str]:
    """Every entry below `directory` that is not a directory, as POSIX paths relative to it."""
    found: list[str] = []
    for current, dirnames, filenames in os.walk(directory, followlinks=False):
        base = Path(current)
        # A symlink to a directory is listed by os.walk among dirnames and never entered.
        for name in dirnames:
            if (base / name).is_symlink():
                found.append((base / name).relative_to(directory).as_posix())
        for name in filenames:
            found.append((base / name).relative_to(directory).as_posix())
    return sorted(found)
