"""Latents of each paired track's crop (the codec/VAE of the prior), cached by content hash.

Latents live in safetensors shards under `cache/` (up to SHARD_ROWS tracks each, every row named by
its (track content, codec, crop) key in the shard's header), so a new track costs one track's work
and a changed codec or crop recomputes everything. The stage's output is an index
(`latents_index.parquet`: track -> shard, row, content hash) and the shards themselves (a persistent
DVC output: versioned, pushed and pulled like any data; shards no current track uses are pruned);
training reads one row at a time from
memory-mapped shards, so ArtSound's 105,884 latents never sit in RAM at once. Each track keeps the scaled posterior's mean and
std (`codec.encode_distribution`): training draws `mean + std * noise` per step, as AudioLDM2 trains
on `latent_dist.sample() * scaling_factor`; evaluation encodes with `codec.encode` (the mean).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from art2mus.config import AudioParams
from art2mus.io import UnreadableFile, atomic_path, check_safetensors, open_safetensors, read_table, unreadable
from art2mus.models.audio import CROP_VERSION, AudioDecodeError, log_mel, mel_transform, model_crop, read_mono
from art2mus.models.backbone import Backbone

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"
INDEX_FILE = "latents_index.parquet"
SHARD_ROWS = 512
FAILED_FILE = "latents_failed.parquet"
POSTERIOR = "mean+std"  # what a cached latent holds; keyed, so latents cached as the posterior's mode are recomputed


def cache_key(sha256: str, codec_id: str, audio: AudioParams) -> str:
    """The identity of one latent: file content, codec weights, crop and mel settings."""
    settings = json.dumps({"codec": codec_id, "crop_version": CROP_VERSION, "posterior": POSTERIOR,
                           **audio.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(f"{sha256}:{settings}".encode()).hexdigest()


def crop_log_mel(path: Path, audio: AudioParams, transform: torch.nn.Module) -> torch.Tensor:
    """[frames, n_mels] log-mel of a track's model crop."""
    wave = model_crop(read_mono(path, audio.sample_rate), audio)
    return log_mel(torch.from_numpy(wave)[None], audio, transform)[0]


def row_sha256(mean: torch.Tensor, std: torch.Tensor) -> str:
    """Content hash of one cached posterior (float32 bytes of mean, then std)."""
    digest = hashlib.sha256(mean.float().contiguous().numpy().tobytes())
    digest.update(std.float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_rows(cache: Path) -> dict[str, tuple[str, int, str]]:
    """key -> (shard file name, row, content sha256) for every row of every readable shard (headers only); a
    damaged shard is skipped with a warning (its tracks are computed again and it is pruned)."""
    found: dict[str, tuple[str, int, str]] = {}
    for shard in sorted(cache.glob("shard-*.safetensors")):
        try:
            with open_safetensors(shard) as handle:
                meta = handle.metadata() or {}
            rows = list(zip(json.loads(meta.get("keys", "[]")), json.loads(meta.get("sha256", "[]"))))
        except (UnreadableFile, ValueError) as error:
            logger.warning("latents: skipping damaged shard %s; its tracks are computed again (%s)", shard, error)
            continue
        for row, (key, digest) in enumerate(rows):
            found.setdefault(key, (shard.name, row, digest))
    return found


def write_shard(cache: Path, keys: list[str], means: list[torch.Tensor], stds: list[torch.Tensor]) -> dict:
    """One shard of posteriors, named by its contents; returns key -> (shard, row, sha256)."""
    digests = [row_sha256(mean, std) for mean, std in zip(means, stds)]
    name = "shard-" + hashlib.sha256(json.dumps([keys, digests]).encode()).hexdigest()[:24] + ".safetensors"
    with atomic_path(cache / name) as tmp:
        save_file({"mean": torch.stack(means).contiguous(), "std": torch.stack(stds).contiguous()}, tmp,
                  metadata={"keys": json.dumps(keys), "sha256": json.dumps(digests)})
    return {key: (name, row, digest) for row, (key, digest) in enumerate(zip(keys, digests))}


def compute_latents(
    tracks: pd.DataFrame, fma_root: Path, backbone: Backbone, audio: AudioParams, out_dir: Path,
    batch_size: int = 32, quiet: bool = False, shard_rows: int = SHARD_ROWS,
) -> dict[str, int]:
    """Posteriors for every row of `tracks` (track_id, path, sha256) not cached yet; writes the index."""
    codec_id = backbone.info["identity"]
    cache = out_dir / CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    keys = [cache_key(sha, codec_id, audio) for sha in tracks["sha256"]]
    located = cached_rows(cache)
    first_of_key: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in located:
            first_of_key.setdefault(key, i)  # identical files share one latent
    missing = list(first_of_key.values())
    transform = mel_transform(audio)
    failed: list[dict[str, str]] = []
    # Posteriors computed but not yet in a shard.
    pending_keys: list[str] = []
    pending_means: list[torch.Tensor] = []
    pending_stds: list[torch.Tensor] = []
    bar = tqdm(total=len(missing), desc="latents", unit="track", disable=quiet, leave=False)
    for start in range(0, len(missing), batch_size):
        rows, mels = [], []
        for i in missing[start: start + batch_size]:
            try:
                mels.append(crop_log_mel(fma_root / tracks["path"].iloc[i], audio, transform))
                rows.append(i)
            except AudioDecodeError as error:
                failed.append({"key": keys[i], "reason": str(error)})
        if mels:
            with torch.no_grad():
                means, stds = backbone.codec.encode_distribution(torch.stack(mels))
            for i, mean, std in zip(rows, means.float().cpu(), stds.float().cpu()):
                pending_keys.append(keys[i])
                pending_means.append(mean.clone())
                pending_stds.append(std.clone())
        last = start + batch_size >= len(missing)
        while len(pending_keys) >= shard_rows or (last and pending_keys):
            located.update(write_shard(cache, pending_keys[:shard_rows], pending_means[:shard_rows],
                                       pending_stds[:shard_rows]))
            del pending_keys[:shard_rows], pending_means[:shard_rows], pending_stds[:shard_rows]
        bar.update(len(missing[start: start + batch_size]))
    bar.close()
    failed_keys = {item["key"]: item["reason"] for item in failed}
    failures = [{"track_id": int(t), "reason": failed_keys[k]} for t, k in zip(tracks["track_id"], keys)
                if k in failed_keys]
    index = pd.DataFrame(
        [{"track_id": int(t), "key": k, "shard": located[k][0], "row": located[k][1], "sha256": located[k][2]}
         for t, k in zip(tracks["track_id"], keys) if k not in failed_keys],
        columns=["track_id", "key", "shard", "row", "sha256"])
    with atomic_path(out_dir / INDEX_FILE) as tmp:
        index.to_parquet(tmp, index=False)
    pruned = prune_shards(cache, set(index["shard"]))
    with atomic_path(out_dir / FAILED_FILE) as tmp:
        pd.DataFrame(failures, columns=["track_id", "reason"]).to_parquet(tmp, index=False)
    if failures:
        logger.warning("latents: %d track(s) failed to decode, e.g. %s", len(failures), failures[0]["reason"])
    return {"tracks": len(index), "computed": len(missing) - len(failed), "failed": len(failures),
            "shards": len(set(index["shard"])), "shards_pruned": pruned}


def prune_shards(cache: Path, kept: set[str]) -> int:
    """Delete every file but the shards current tracks use (older caches' files included): the folder is
    a DVC output, versioned whole."""
    stale = [item for item in cache.iterdir() if item.is_file() and item.name not in kept]
    for shard in stale:
        shard.unlink()
    return len(stale)


def load_latent_index(out_dir: Path) -> pd.DataFrame:
    """The index `compute_latents` wrote: track_id, key, shard, row, sha256 (content hash)."""
    return read_table(Path(out_dir) / INDEX_FILE)


class LatentPosteriors:
    """(mean, std) rows of cached shards, read lazily: each process (or DataLoader worker) opens a
    shard memory-mapped on first use and copies out one row at a time."""

    def __init__(self, cache: Path, shards: list[str], rows: list[int]) -> None:
        self.cache, self.shards, self.rows = Path(cache), list(shards), [int(row) for row in rows]
        self._handles: dict[str, safe_open] = {}

    @classmethod
    def from_index(cls, out_dir: Path, index: pd.DataFrame) -> LatentPosteriors:
        """The rows `index` names; each shard it uses must be there and complete (its header is read here,
        so a damaged shard is named before training starts rather than in a data loader's worker)."""
        cache = Path(out_dir) / CACHE_DIR
        for shard in dict.fromkeys(index["shard"]):
            if not (cache / shard).is_file():
                raise UnreadableFile(f"{cache / shard}: missing, but {Path(out_dir) / INDEX_FILE} uses it; "
                                     "re-run `dvc repro latents` to rebuild it")
            check_safetensors(cache / shard)
        return cls(cache, index["shard"].tolist(), index["row"].tolist())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard, row = self.shards[i], self.rows[i]
        try:
            if shard not in self._handles:
                self._handles[shard] = safe_open(self.cache / shard, "pt")
            handle = self._handles[shard]
            return handle.get_slice("mean")[row: row + 1][0], handle.get_slice("std")[row: row + 1][0]
        except (SafetensorError, OSError) as error:  # changed on disk after `from_index` checked it
            raise unreadable(self.cache / shard, error) from None

    def __getstate__(self) -> dict:  # handles stay in the process that opened them
        return {**self.__dict__, "_handles": {}}
