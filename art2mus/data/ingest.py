"""Ingest: an ArtGraph export and an FMA copy into manifests, every bad file quarantined with why.

Per-file work (content hash, full decode) is cached in SQLite keyed by (path, size, mtime) -> hash
and hash -> decoded properties, so adding one file to 100k costs one file's work. Uncached files
are hashed and decoded in one pass, across one pool of worker processes. Raw data is
only ever read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Set
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from art2mus.config import IngestParams
from art2mus.data import artgraph, fma
from art2mus.data.probe import probe_audio, probe_image
from art2mus.data.schema import (
    ARTWORK_COLUMNS,
    ARTWORKS_MANIFEST,
    QUARANTINE_COLUMNS,
    QUARANTINE_MANIFEST,
    TRACK_COLUMNS,
    TRACKS_MANIFEST,
)
from art2mus.data.sources import IngestError, Quarantined, list_files, printable_name, unsafe_path_reason
from art2mus.io import sha256_file, write_json_atomic, write_table_atomic

logger = logging.getLogger(__name__)

CACHE_FILE = "ingest_cache.sqlite"
SUMMARY_FILE = "ingest_summary.json"
PROBE_VERSION = 1  # bump when probe_image/probe_audio change what they report
CHUNK = 32


@dataclass(frozen=True)
class FileTask:
    """One file to examine: which kind of probe, where it is, how the manifest names it."""

    kind: str  # image | audio
    path: str  # absolute
    relpath: str  # relative to the source root


class ProbeCache:
    """SQLite cache: file stat -> content hash, and content hash -> probe result."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(path)
        self.connection.executescript(
            """
            CREATE TABLE IF NOT EXISTS hashes (
                path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT);
            CREATE TABLE IF NOT EXISTS probes (
                kind TEXT, sha256 TEXT, version INTEGER, result TEXT, PRIMARY KEY (kind, sha256));
            """
        )

    def known_hash(self, path: str, stat: os.stat_result) -> str | None:
        row = self.connection.execute(
            "SELECT sha256 FROM hashes WHERE path = ? AND size = ? AND mtime_ns = ?",
            (path, stat.st_size, stat.st_mtime_ns),
        ).fetchone()
        return row[0] if row else None

    def remember_hash(self, path: str, stat: os.stat_result, sha256: str) -> None:
        self.connection.execute(
            "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", (path, stat.st_size, stat.st_mtime_ns, sha256)
        )

    def known_probe(self, kind: str, sha256: str) -> dict[str, Any] | None:
        row = self.connection.execute(
            "SELECT result FROM probes WHERE kind = ? AND sha256 = ? AND version = ?",
            (kind, sha256, PROBE_VERSION),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def remember_probe(self, kind: str, sha256: str, result: dict[str, Any]) -> None:
        self.connection.execute(
            "INSERT OR REPLACE INTO probes VALUES (?, ?, ?, ?)", (kind, sha256, PROBE_VERSION, json.dumps(result))
        )

    def commit(self) -> None:
        self.connection.commit()

    def close(self) -> None:
        self.connection.commit()
        self.connection.close()


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
    """Mute C libraries (mpg123 prints resync notes for bad MP3s); errors still come back as values."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def examine_file(task: FileTask) -> tuple[str, dict[str, Any]]:
    """Content hash and full decode of one file (runs in a worker process)."""
    digest = sha256_file(task.path)
    if task.kind == "image":
        return digest, probe_image(Path(task.path))
    with silenced_stderr():
        return digest, probe_audio(Path(task.path))


class WorkerPool:
    """Worker processes for the whole ingest, started only when a batch needs them (a start costs seconds)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor: ProcessPoolExecutor | None = None

    def map(self, function: Callable, tasks: list, desc: str, quiet: bool) -> list:
        """`function` over `tasks` in order, with progress; in-process for one worker or few tasks."""
        bar = dict(total=len(tasks), desc=desc, unit="file", disable=quiet or not tasks, leave=False)
        if self.workers == 1 or len(tasks) < 2 * CHUNK:
            return list(tqdm(map(function, tasks), **bar))
        if self.executor is None:
            self.executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"))
        return list(tqdm(self.executor.map(function, tasks, chunksize=CHUNK), **bar))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()


def examine_files(
    tasks: list[FileTask], cache: ProbeCache, pool: WorkerPool, quiet: bool, work: dict[str, int]
) -> dict[str, dict]:
    """relpath -> {'sha256', 'bytes', decoded properties or 'error'}, doing only uncached work.

    A file whose (path, size, mtime) and content hash are both cached costs nothing; any other
    file is hashed and decoded once. `work` counts the files examined.
    """
    stats = {task.path: os.stat(task.path) for task in tasks}
    found: dict[str, tuple[str, dict]] = {}
    pending = []
    for task in tasks:
        digest = cache.known_hash(task.path, stats[task.path])
        probe = cache.known_probe(task.kind, digest) if digest else None
        if digest and probe is not None:
            found[task.path] = (digest, probe)
        else:
            pending.append(task)
    for task, (digest, probe) in zip(pending, pool.map(examine_file, pending, "ingest", quiet)):
        cache.remember_hash(task.path, stats[task.path], digest)
        cache.remember_probe(task.kind, digest, probe)
        found[task.path] = (digest, probe)
    cache.commit()
    work["hashed"] = work.get("hashed", 0) + len(pending)
    work["decoded"] = work.get("decoded", 0) + len(pending)
    logger.info("examined %d files: %d hashed and decoded, the rest from cache", len(tasks), len(pending))
    return {
        task.relpath: {"sha256": found[task.path][0], "bytes": stats[task.path].st_size, **found[task.path][1]}
        for task in tasks
    }


def match_files(
    source: str,
    root: Path,
    frame: pd.DataFrame,
    id_column: str,
    on_disk: set[str],
    kind: str,
) -> tuple[pd.DataFrame, list[FileTask], list[Quarantined]]:
    """Keep metadata rows whose file is safe to open and present; set the others aside."""
    quarantined: list[Quarantined] = []
    keep = []
    tasks = []
    for row in frame.itertuples(index=False):
        relpath = row.path
        reason = unsafe_path_reason(root, relpath)
        if reason is None and relpath not in on_disk:
            reason = f"no file at {relpath}"
        if reason is None:
            tasks.append(FileTask(kind, str(root / relpath), relpath))
        else:
            quarantined.append(Quarantined(source, str(getattr(row, id_column)), relpath, reason))
        keep.append(reason is None)
    return frame[keep].reset_index(drop=True), tasks, quarantined


def files_without_metadata(
    source: str, on_disk: Iterable[str], referenced: Set[str], ignored: Set[str] = frozenset()
) -> list[Quarantined]:
    return [
        Quarantined(source, "", printable_name(path), "file has no metadata row")
        for path in on_disk
        if path not in referenced and path not in ignored
    ]


def attach_probes(
    source: str, frame: pd.DataFrame, id_column: str, probes: dict[str, dict], fields: list[str]
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Add decoded properties to each row; rows whose file failed to decode are quarantined."""
    quarantined = []
    keep = []
    for row in frame.itertuples(index=False):
        error = probes[row.path].get("error")
        if error:
            quarantined.append(Quarantined(source, str(getattr(row, id_column)), row.path, error))
        keep.append(error is None)
    frame = frame[keep].reset_index(drop=True)
    for field in fields:
        frame[field] = [probes[path].get(field) for path in frame["path"]]
    return frame, quarantined


def conform(frame: pd.DataFrame, columns: dict[str, str], extras: bool) -> pd.DataFrame:
    """Order and type columns per the schema; keep extra source columns when asked."""
    ordered = list(columns) + ([c for c in frame.columns if c not in columns] if extras else [])
    frame = frame[ordered].copy()
    for column, kind in columns.items():
        if kind == "string":
            frame[column] = frame[column].astype("string")
        elif kind in ("int64", "float64"):
            frame[column] = frame[column].astype(kind)
    for column in ordered[len(columns):]:
        frame[column] = frame[column].astype("string")
    return frame


@dataclass(frozen=True)
class MediaFolder:
    """A source's folder of media files and how they join its metadata rows."""

    source: str
    folder: str  # relative to the source's root
    id_column: str
    kind: str  # image | audio: which probe examines the files
    fields: tuple[str, ...]  # what the probe adds to each row
    ignored: frozenset[str] = frozenset()  # file names in the folder that are not items


def probe_folder(
    media: MediaFolder, root: Path, metadata: pd.DataFrame, quarantined: list[Quarantined],
    cache: ProbeCache, pool: WorkerPool, quiet: bool, work: dict[str, int],
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Metadata rows with their files' probed fields, and every item set aside (the metadata's own included)."""
    prefix = media.folder + "/"
    on_disk = {prefix + path for path in list_files(root / media.folder)}
    referenced = set(metadata["path"]) | {item.path for item in quarantined}
    ignored = {prefix + name for name in media.ignored}
    unlisted = files_without_metadata(media.source, sorted(on_disk), referenced, ignored)
    metadata, tasks, missing = match_files(media.source, root, metadata, media.id_column, on_disk, media.kind)
    probes = examine_files(tasks, cache, pool, quiet, work)
    rows, undecodable = attach_probes(media.source, metadata, media.id_column, probes, list(media.fields))
    return rows, quarantined + unlisted + missing + undecodable


def ingest_artgraph(root: Path, params: IngestParams, cache: ProbeCache, pool: WorkerPool, quiet: bool,
                    work: dict[str, int]) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Artworks manifest rows and quarantined items of one ArtGraph export."""
    metadata, quarantined = artgraph.read_artgraph_metadata(root, params.artgraph)
    images_dir = root / params.artgraph.images_dir
    if not images_dir.is_dir():
        raise IngestError(f"{images_dir}: images folder not found")
    media = MediaFolder(artgraph.SOURCE, params.artgraph.images_dir, "artwork_id", "image",
                        ("sha256", "bytes", "width", "height", "mode", "format"))
    artworks, quarantined = probe_folder(media, root, metadata, quarantined, cache, pool, quiet, work)
    return conform(artworks.sort_values("artwork_id"), ARTWORK_COLUMNS, extras=True), quarantined


def ingest_fma(root: Path, params: IngestParams, cache: ProbeCache, pool: WorkerPool, quiet: bool,
               work: dict[str, int]) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Tracks manifest rows and quarantined items of one FMA copy."""
    tracks, quarantined = fma.read_fma_tracks(root, params.fma)
    fma.read_fma_genres(root)  # the layout requires it; a missing or malformed one is fatal
    audio_dir = root / fma.audio_dir_name(params.fma)
    if not audio_dir.is_dir():
        raise IngestError(f"{audio_dir}: audio folder not found (ingest.fma.size = {params.fma.size!r})")
    media = MediaFolder(fma.SOURCE, fma.audio_dir_name(params.fma), "track_id", "audio",
                        ("sha256", "bytes", "duration", "sample_rate", "channels", "frames"),
                        frozenset(fma.NON_TRACK_FILES))
    tracks, quarantined = probe_folder(media, root, tracks, quarantined, cache, pool, quiet, work)
    return conform(tracks.sort_values("track_id"), TRACK_COLUMNS, extras=False), quarantined


def quarantine_table(items: list[Quarantined]) -> pd.DataFrame:
    frame = pd.DataFrame([item.as_row() for item in items], columns=list(QUARANTINE_COLUMNS))
    return frame.astype("string").sort_values(["source", "path", "item"]).reset_index(drop=True)


def format_quarantine(quarantine: pd.DataFrame, totals: dict[str, int], location: Path, limit: int = 10) -> str:
    """The STYLE.md report: how many were set aside, where the list is, the first few and why."""
    lines = []
    for source, group in quarantine.groupby("source"):
        lines.append(f"ingest: {len(group)} of {totals[source]:,} {source} items quarantined (see {location}):")
        width = min(max(len(p) for p in group["path"].head(limit)), 60)
        for row in group.head(limit).itertuples():
            lines.append(f"  {row.path or row.item:<{width}}  {row.reason}")
        if len(group) > limit:
            lines.append(f"  ... and {len(group) - limit} more")
    return "\n".join(lines)


def too_short(tracks: pd.DataFrame, min_seconds: float) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Tracks shorter than the model's crop (its offset + length) set aside with the reason."""
    short = tracks["duration"] < min_seconds - 1e-6
    quarantined = [Quarantined(fma.SOURCE, str(row.track_id), row.path,
                               f"too short for the model's crop: {row.duration:.2f} s < {min_seconds:.2f} s "
                               "(audio.crop_offset_seconds + audio.crop_seconds)")
                   for row in tracks[short].itertuples()]
    return tracks[~short].reset_index(drop=True), quarantined


def ingest(artgraph_dir: Path, fma_dir: Path, out_dir: Path, params: IngestParams, quiet: bool = False,
           min_track_seconds: float = 0.0) -> dict:
    """Write artworks/tracks/quarantine manifests into `out_dir`; return the summary.

    Tracks shorter than `min_track_seconds` (the model's crop: offset + length) are quarantined.
    """
    cache = ProbeCache(out_dir / CACHE_FILE)
    work: dict[str, int] = {}
    try:
        pool = WorkerPool(params.workers)
        try:
            artworks, art_quarantine = ingest_artgraph(artgraph_dir, params, cache, pool, quiet, work)
            tracks, fma_quarantine = ingest_fma(fma_dir, params, cache, pool, quiet, work)
        finally:
            pool.close()
    finally:
        cache.close()
    tracks, short = too_short(tracks, min_track_seconds)
    fma_quarantine += short
    quarantine = quarantine_table(art_quarantine + fma_quarantine)
    write_table_atomic(artworks, out_dir / ARTWORKS_MANIFEST)
    write_table_atomic(tracks, out_dir / TRACKS_MANIFEST)
    write_table_atomic(quarantine, out_dir / QUARANTINE_MANIFEST)
    summary = {
        "artworks": len(artworks),
        "tracks": len(tracks),
        "quarantined_artworks": len(art_quarantine),
        "quarantined_tracks": len(fma_quarantine),
    }
    write_json_atomic(summary, out_dir / SUMMARY_FILE)
    summary.update(files_hashed=work.get("hashed", 0), files_decoded=work.get("decoded", 0))
    if len(quarantine):
        totals = {"artgraph": len(artworks) + len(art_quarantine), "fma": len(tracks) + len(fma_quarantine)}
        logger.warning("%s", format_quarantine(quarantine, totals, out_dir / QUARANTINE_MANIFEST))
    logger.info("ingest: %d artworks, %d tracks, %d quarantined", len(artworks), len(tracks), len(quarantine))
    return summary
