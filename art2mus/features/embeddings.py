"""Frozen embeddings of every artwork and track: computed through the shard cache, read by later stages.

Outputs under `features.out_dir`:
- `shards/`: the content-addressed cache (see cache.py), kept across runs.
- `image_embeddings.safetensors`, `audio_embeddings.safetensors`: tensor "embeddings" [N, D]
  (float32, as the encoder returns them: normalise before taking cosines) and one metadata entry
  "art2mus", a JSON object with the row ids (artwork_id / track_id, in manifest order), the encoder
  id and the shared space (null when the encoder declares none). Read them with `load_embeddings`.
- `features_failed.parquet`: every file that could not be embedded, with why (never fatal).
- `features_summary.json`: counts (DVC metrics).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import pandas as pd
import torch
from tqdm.auto import tqdm

from art2mus.config import AudioParams, FeaturesParams
from art2mus.errors import Art2MusError
from art2mus.features.cache import EmbeddingCache
from art2mus.features.media import MediaError, decode_audio_crop, decode_image, read_checked
from art2mus.io import atomic_path, open_safetensors, unreadable, write_json_atomic, write_table_atomic
from art2mus.models.encoders import EncoderRef, default_device

logger = logging.getLogger(__name__)

FEATURES_VERSION = 2  # bump when decoding or cropping changes what an encoder is given
SHARDS_DIR = "shards"
FAILED_FILE = "features_failed.parquet"
SUMMARY_FILE = "features_summary.json"
EMBEDDING_FILES = {"image": "image_embeddings.safetensors", "audio": "audio_embeddings.safetensors"}
ID_COLUMNS = {"image": "artwork_id", "audio": "track_id"}
METADATA_KEY = "art2mus"
FAILED_COLUMNS = {"modality": "string", "item": "string", "path": "string", "reason": "string"}


class EncoderSource(Protocol):
    """An encoder known by id before it is loaded (art2mus.models.encoders.EncoderRef)."""

    @property
    def encoder_id(self) -> str: ...

    @property
    def shared_space(self) -> str | None: ...

    def load(self) -> Any: ...


class Embeddings(NamedTuple):
    """One modality's embeddings: row i of `matrix` belongs to `ids[i]`."""

    ids: list
    matrix: torch.Tensor
    encoder_id: str
    shared_space: str | None


@dataclass
class EmbeddingRun:
    """What one modality's pass produced and how much work it did."""

    embeddings: Embeddings
    failures: list[dict[str, str]] = field(default_factory=list)
    embedded: int = 0  # files run through the encoder in this pass
    reused: int = 0  # distinct contents found in the cache


def shaping_params(modality: str, audio: AudioParams) -> dict[str, Any]:
    """The params, besides the encoder, that change an embedding (part of the cache key)."""
    shaping: dict[str, Any] = {"features_version": FEATURES_VERSION}
    if modality == "audio":
        shaping.update(sample_rate=audio.sample_rate, crop_offset_seconds=audio.crop_offset_seconds,
                       crop_seconds=audio.crop_seconds)
    return shaping


def embed_files(
    modality: str,
    items: pd.DataFrame,
    root: Path,
    cache: EmbeddingCache,
    encoder_source: EncoderSource,
    audio: AudioParams,
    batch_size: int = 16,
    shard_size: int = 512,
    quiet: bool = False,
) -> EmbeddingRun:
    """Embed every not-yet-cached file of `items` (columns id, path, sha256) and gather all rows.

    Files are decoded one batch at a time (memory stays bounded by the batch and one shard of
    embeddings); the encoder is loaded only when some file needs it; each content is embedded once.
    """
    distinct = items.drop_duplicates("sha256")
    pending = distinct[distinct["sha256"].isin(set(cache.missing(distinct["sha256"])))]
    failed: dict[str, str] = {}  # content hash -> reason
    embedded = 0
    if len(pending):
        encoder = encoder_source.load()
        decode: Callable[[bytes], Any] = decode_image if modality == "image" else (
            lambda data: decode_audio_crop(data, audio))
        buffer_hashes: list[str] = []
        buffer_vectors: list[torch.Tensor] = []
        bar = tqdm(total=len(pending), desc=f"{modality} embeddings", unit="file", disable=quiet, leave=False)
        try:
            for start in range(0, len(pending), batch_size):
                batch = pending.iloc[start: start + batch_size]
                inputs, hashes = [], []
                for row in batch.itertuples(index=False):
                    try:
                        inputs.append(decode(read_checked(root, row.path, row.sha256)))
                        hashes.append(row.sha256)
                    except MediaError as error:
                        failed[row.sha256] = str(error)
                if inputs:
                    if modality == "image":
                        vectors = encoder.embed_images(inputs)
                    else:
                        vectors = encoder.embed_audio(inputs, audio.sample_rate)
                    buffer_hashes.extend(hashes)
                    buffer_vectors.append(vectors)
                    embedded += len(inputs)
                del inputs
                while len(buffer_hashes) >= shard_size:  # whole shards as soon as they fill
                    stacked = torch.cat(buffer_vectors)
                    cache.add(buffer_hashes[:shard_size], stacked[:shard_size])
                    buffer_hashes, buffer_vectors = buffer_hashes[shard_size:], [stacked[shard_size:]]
                bar.update(len(batch))
        finally:  # an interrupted run keeps what it computed
            bar.close()
            if buffer_hashes:
                cache.add(buffer_hashes, torch.cat(buffer_vectors))
        del encoder

    ok = items[items["sha256"].isin(cache.rows.keys())]
    failures = [
        {"modality": modality, "item": str(row.id), "path": row.path, "reason": failed[row.sha256]}
        for row in items.itertuples(index=False) if row.sha256 in failed
    ]
    matrix = cache.get(list(ok["sha256"]))
    embeddings = Embeddings(ids=list(ok["id"]), matrix=matrix, encoder_id=cache.encoder_id,
                            shared_space=cache.shared_space)
    return EmbeddingRun(embeddings, failures, embedded=embedded, reused=len(distinct) - len(pending))


def save_embeddings(embeddings: Embeddings, modality: str, path: Path) -> None:
    """One modality's embeddings as safetensors, ids and encoder in the metadata (atomic)."""
    from safetensors.torch import save_file

    ids = [int(value) for value in embeddings.ids] if modality == "audio" else [str(value) for value in embeddings.ids]
    record = {
        "modality": modality,
        "id_column": ID_COLUMNS[modality],
        "ids": ids,
        "encoder_id": embeddings.encoder_id,
        "shared_space": embeddings.shared_space,
        "count": len(ids),
        "dim": int(embeddings.matrix.shape[1]),
    }
    # One metadata key: safetensors writes its metadata map in no fixed order, one entry is stable.
    metadata = {METADATA_KEY: json.dumps(record, sort_keys=True, ensure_ascii=False)}
    with atomic_path(path) as tmp:
        save_file({"embeddings": embeddings.matrix.to(torch.float32).contiguous()}, str(tmp), metadata=metadata)


def load_embeddings(out_dir: str | Path, modality: str) -> Embeddings:
    """(ids, matrix [N, D], encoder_id, shared_space) of "image" or "audio" embeddings in `out_dir`."""
    if modality not in EMBEDDING_FILES:
        raise ValueError(f"modality must be one of {sorted(EMBEDDING_FILES)}, got {modality!r}")
    path = Path(out_dir) / EMBEDDING_FILES[modality]
    if not path.is_file():
        raise Art2MusError(f"{path} not found: run the features stage first (dvc repro features)")
    with open_safetensors(path) as handle:
        try:
            record = json.loads((handle.metadata() or {})[METADATA_KEY])
        except (KeyError, ValueError) as error:
            raise unreadable(path, f"no readable {METADATA_KEY!r} record: {type(error).__name__}") from None
        matrix = handle.get_tensor("embeddings")
    return Embeddings(ids=record["ids"], matrix=matrix, encoder_id=record["encoder_id"],
                      shared_space=record["shared_space"])


def manifest_items(manifest: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """The (id, path, sha256) columns of a manifest."""
    missing = {id_column, "path", "sha256"} - set(manifest.columns)
    if missing:
        raise Art2MusError(f"manifest lacks column(s) {', '.join(sorted(missing))}")
    return manifest[[id_column, "path", "sha256"]].rename(columns={id_column: "id"}).reset_index(drop=True)


def format_failures(failures: pd.DataFrame, location: Path, limit: int = 10) -> str:
    lines = [f"{len(failures)} file(s) could not be embedded (see {location}):"]
    for row in failures.head(limit).itertuples(index=False):
        lines.append(f"  {row.modality:<5}  {row.path}  {row.reason}")
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    return "\n".join(lines)


def compute_features(
    artworks: pd.DataFrame,
    tracks: pd.DataFrame,
    artgraph_dir: Path,
    fma_dir: Path,
    out_dir: Path,
    config: FeaturesParams,
    audio: AudioParams,
    image_encoder: EncoderSource | None = None,
    audio_embedder: EncoderSource | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Embed every artwork and track (cached), write the embedding files and failures; return a summary.

    `image_encoder` / `audio_embedder` default to the encoders `config` names. Images go first and
    their encoder is released before the audio one is loaded (ImageBind-huge twice would not fit).
    """
    device = default_device()
    sources = {
        "image": image_encoder or EncoderRef(config.image_encoder, "image", device),
        "audio": audio_embedder or EncoderRef(config.audio_embedder, "audio", device),
    }
    jobs = {
        "image": (manifest_items(artworks, "artwork_id"), Path(artgraph_dir)),
        "audio": (manifest_items(tracks, "track_id"), Path(fma_dir)),
    }
    summary: dict[str, Any] = {}
    failures: list[dict[str, str]] = []
    encoders: dict[str, str] = {}
    for modality, (items, root) in jobs.items():
        source = sources[modality]
        cache = EmbeddingCache(out_dir / SHARDS_DIR, modality, source.encoder_id, source.shared_space,
                               shaping_params(modality, audio))
        run = embed_files(modality, items, root, cache, source, audio, config.batch_size, config.shard_size, quiet)
        save_embeddings(run.embeddings, modality, out_dir / EMBEDDING_FILES[modality])
        failures.extend(run.failures)
        encoders[modality] = cache.encoder_id
        summary.update({
            f"{modality}_items": len(items),
            f"{modality}_embedded": len(run.embeddings.ids),
            f"{modality}_computed": run.embedded,
            f"{modality}_cached": run.reused,
            f"{modality}_failed": len(run.failures),
            f"{modality}_dim": int(run.embeddings.matrix.shape[1]),
        })
        logger.info(
            "features: %s: %d of %d embedded with %s (%d computed, %d from cache, %d failed)",
            modality, len(run.embeddings.ids), len(items), cache.encoder_id, run.embedded, run.reused,
            len(run.failures),
        )

    failed = pd.DataFrame(failures, columns=list(FAILED_COLUMNS)).astype(FAILED_COLUMNS)
    write_table_atomic(failed, out_dir / FAILED_FILE)
    if len(failed):
        logger.warning("features: %s", format_failures(failed, out_dir / FAILED_FILE))
    # DVC metrics: numbers that do not depend on what the cache already held.
    write_json_atomic({key: value for key, value in summary.items() if not key.endswith(("_computed", "_cached"))},
                      out_dir / SUMMARY_FILE)
    summary.update(image_encoder_id=encoders["image"], audio_embedder_id=encoders["audio"])
    return summary
