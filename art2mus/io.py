"""File I/O: atomic output (a crash never leaves a half-written file behind), reading that names a damaged
file and what rebuilds it, and content hashes (verified weights are hashed once, see `verified_sha256_file`)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from art2mus.env import project_root
from art2mus.errors import Art2MusError

if TYPE_CHECKING:  # pandas is imported where tables are read: JSON readers (the flow) need not pay for it
    import pandas as pd

logger = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20


class UnreadableFile(Art2MusError):
    """A file a stage or command reads is truncated or corrupt; the message names it and what rebuilds it."""


@functools.lru_cache(maxsize=8)
def _lock_outputs(lock: Path, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    """(output path, stage) pairs of a dvc.lock (cached while the file is unchanged)."""
    import yaml

    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, ValueError, yaml.YAMLError):
        return ()
    return tuple((str(out["path"]).rstrip("/"), name) for name, stage in stages.items() if isinstance(stage, dict)
                 for out in stage.get("outs", []) if isinstance(out, dict) and "path" in out)


def producing_stage(path: str | Path) -> str | None:
    """The DVC stage whose output holds `path` (by the project's dvc.lock), or None."""
    path = Path(path).absolute()
    root = project_root(path.parent)
    lock = root / "dvc.lock"
    if not lock.is_file() or not path.is_relative_to(root):
        return None
    relative = path.relative_to(root).as_posix()
    for out, stage in _lock_outputs(lock, lock.stat().st_mtime_ns):
        if relative == out or relative.startswith(out + "/"):
            return stage
    return None


def rebuild_hint(path: str | Path) -> str:
    """What to run to get a damaged file back: its DVC stage when a stage writes it."""
    stage = producing_stage(path)
    if stage is not None:
        return f"re-run `dvc repro {stage}` to rebuild it"
    return "restore it from where it came from"


def unreadable(path: str | Path, error: BaseException | str, hint: str | None = None) -> UnreadableFile:
    """The error for a damaged file: `<path>: unreadable, truncated or corrupt (<why>); <what to run>`."""
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {str(error).strip()[:300]}"
    return UnreadableFile(f"{path}: unreadable, truncated or corrupt ({reason}); {hint or rebuild_hint(path)}")


def _safetensors_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (SafetensorError, OSError, ValueError)


@contextlib.contextmanager
def open_safetensors(path: str | Path, hint: str | None = None) -> Iterator[Any]:
    """`safetensors.safe_open(path)` (torch tensors); a truncated or corrupt file is an UnreadableFile.

    Opening reads and checks the header, which must cover the whole file, so a truncated file fails here."""
    from safetensors import safe_open

    errors = _safetensors_errors()
    try:
        handle = safe_open(str(path), framework="pt")
    except FileNotFoundError:
        raise
    except errors as error:
        raise unreadable(path, error, hint) from None
    try:
        with handle:
            yield handle
    except errors[0] as error:  # a tensor whose bytes cannot be read
        raise unreadable(path, error, hint) from None


def read_safetensors(path: str | Path, hint: str | None = None) -> dict[str, Any]:
    """Every tensor of a safetensors file (CPU torch tensors), or UnreadableFile naming it."""
    with open_safetensors(path, hint) as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def check_safetensors(path: str | Path, hint: str | None = None) -> None:
    """UnreadableFile unless `path` is a complete safetensors file (its header only is read)."""
    with open_safetensors(path, hint):
        pass


def check_model_folder(folder: str | Path, hint: str | None = None) -> None:
    """Every `*.safetensors` and `*.json` under a saved model folder reads (headers and JSON only): a truncated
    weights or config file is named here, before a library's loader fails on it with its own traceback."""
    for file in sorted(Path(folder).rglob("*")):
        if file.suffix == ".safetensors" and file.is_file():
            check_safetensors(file, hint)
        elif file.suffix == ".json" and file.is_file():
            read_json(file, hint)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path` in one rename.

    Works for files and directories. On error the temporary is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if target.is_file():
            with open(target, "rb") as handle:
                os.fsync(handle.fileno())
        if path.is_dir() and not path.is_symlink():
            # A directory cannot be replaced by rename while it has content: swap it aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(text: str, path: str | Path) -> None:
    write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj: Any, path: str | Path) -> None:
    write_text_atomic(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def read_json(path: str | Path, hint: str | None = None) -> Any:
    """A JSON file's content; invalid JSON (a truncated file) is an UnreadableFile naming the file and what
    rebuilds it (`hint`, by default the DVC stage that writes it). A missing file raises FileNotFoundError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnreadableFile(f"{path}: not valid JSON, truncated or corrupt ({error}); "
                             f"{hint or rebuild_hint(path)}") from None


def write_table_atomic(table: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame as Parquet (or CSV when the suffix says so), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)


def read_table(path: str | Path, hint: str | None = None) -> pd.DataFrame:
    """A Parquet (or CSV) table; a truncated or corrupt file is an UnreadableFile naming it and what rebuilds it
    (`hint`, by default the DVC stage that writes it). A missing file raises FileNotFoundError."""
    import pandas as pd
    import pyarrow

    path = Path(path)
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except (pyarrow.ArrowException, OSError, ValueError) as error:  # ArrowInvalid, pandas' ParserError, ...
        raise unreadable(path, error, hint) from None


def sha256_file(path: str | Path) -> str:
    """Content hash of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: str | Path, file_hash: Callable[[Path], str] | None = None) -> str:
    """Content hash of a folder: every file's relative path and streamed content hash, in sorted order.

    `file_hash` hashes one file (default `sha256_file`; `verified_sha256_file` reuses earlier hashes)."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(item for item in root.rglob("*") if item.is_file()):
        content = (file_hash or sha256_file)(file)
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + content.encode() + b"\n")
    return digest.hexdigest()


# ---- hashes of weights, verified once ------------------------------------------------------------------------
# A file's hash is kept under its identity on disk: (resolved path, size, mtime_ns, ctime_ns, inode). Any write
# (or `touch`, chmod, copy, checkout) changes the ctime, which no user call can set back, so a changed file is
# hashed again. In this process every hash is kept; files of PERSIST_MIN_BYTES or more (the real profile's
# gigabytes) are also kept in a small JSON (HASH_CACHE_ENV names it; `off` disables it), so a later process
# only stats them. Small files (the tiny profile's, configs) are re-hashed once per process.
HASH_CACHE_ENV = "ART2MUS_HASH_CACHE"
PERSIST_MIN_BYTES = 64 << 20
HASH_CACHE_ENTRIES = 4096  # the JSON keeps the newest entries whose files still exist
_verified_hashes: dict[str, str] = {}


def hash_cache_file() -> Path | None:
    """Where hashes of large files persist between processes: $ART2MUS_HASH_CACHE, else beside the Hugging Face
    cache in the user's cache folder (~/.cache/art2mus/sha256.json); None when set to `off`."""
    explicit = os.environ.get(HASH_CACHE_ENV)
    if explicit:
        return None if explicit.lower() in ("off", "0", "false", "no") else Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "art2mus" / "sha256.json"


def file_identity(path: str | Path) -> str:
    """A key that changes whenever the file's content can have changed (see the comment above)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"


def _read_hash_cache(file: Path) -> dict[str, str]:
    try:
        cached = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or damaged: it is only a cache
        return {}
    return {str(key): str(value) for key, value in cached.items()} if isinstance(cached, dict) else {}


def _remember_hash(file: Path, key: str, digest: str) -> None:
    """Add one entry to the persistent cache, dropping entries of files that no longer exist (best effort)."""
    cached = _read_hash_cache(file)
    cached[key] = digest
    kept = {name: value for name, value in cached.items() if Path(name.split("|", 1)[0]).exists()}
    kept = dict(list(kept.items())[-HASH_CACHE_ENTRIES:])
    try:
        write_json_atomic(kept, file)
    except OSError as error:
        logger.debug("hash cache %s not written (%s)", file, error)


def verified_sha256_file(path: str | Path) -> str:
    """`sha256_file(path)`, streamed, computed once per process per file identity; files of PERSIST_MIN_BYTES or
    more are remembered across processes in `hash_cache_file()`."""
    key = file_identity(path)
    if key in _verified_hashes:
        return _verified_hashes[key]
    size = int(key.split("|")[1])
    cache = hash_cache_file() if size >= PERSIST_MIN_BYTES else None
    digest = _read_hash_cache(cache).get(key) if cache is not None else None
    if digest is None:
        digest = sha256_file(path)
        if cache is not None:
            _remember_hash(cache, key, digest)
    _verified_hashes[key] = digest
    return digest


def verified_sha256_tree(path: str | Path) -> str:
    """`sha256_tree(path)` with each file's hash from `verified_sha256_file` (hashed once while unchanged)."""
    return sha256_tree(path, verified_sha256_file)
