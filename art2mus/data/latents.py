"""Latents of each paired track's crop (the codec/VAE of the prior), cached by content hash.

One small safetensors file per (track content, codec, crop) key under `cache/`, so a new track
costs one track's work and a changed codec or crop recomputes everything; `latents.safetensors`
gathers the current tracks' latents for training. Each track keeps the scaled posterior's mean and
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
from tqdm.auto import tqdm

from art2mus.config import AudioParams
from art2mus.io import atomic_path
from art2mus.models.audio import CROP_VERSION, AudioDecodeError, log_mel, mel_transform, model_crop, read_mono
from art2mus.models.backbone import Backbone

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"
LATENTS_FILE = "latents.safetensors"
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


def compute_latents(
    tracks: pd.DataFrame, fma_root: Path, backbone: Backbone, audio: AudioParams, out_dir: Path,
    batch_size: int = 32, quiet: bool = False,
) -> dict[str, int]:
    """Latents for every row of `tracks` (track_id, path, sha256); writes latents.safetensors."""
    from safetensors.torch import load_file, save_file

    info = backbone.info
    codec_id = info["identity"]
    cache = out_dir / CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    keys = [cache_key(sha, codec_id, audio) for sha in tracks["sha256"]]
    missing = [i for i, key in enumerate(keys) if not (cache / f"{key}.safetensors").is_file()]
    transform = mel_transform(audio)
    failed = []
    bar = tqdm(total=len(missing), desc="latents", unit="track", disable=quiet, leave=False)
    for start in range(0, len(missing), batch_size):
        rows, mels = [], []
        for i in missing[start: start + batch_size]:
            try:
                mels.append(crop_log_mel(fma_root / tracks["path"].iloc[i], audio, transform))
                rows.append(i)
            except AudioDecodeError as error:
                failed.append({"track_id": int(tracks["track_id"].iloc[i]), "reason": str(error)})
        if mels:
            with torch.no_grad():
                means, stds = backbone.codec.encode_distribution(torch.stack(mels))
            for i, mean, std in zip(rows, means.float().cpu(), stds.float().cpu()):
                with atomic_path(cache / f"{keys[i]}.safetensors") as tmp:
                    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, tmp)
        bar.update(len(missing[start: start + batch_size]))
    bar.close()
    failed_ids = {item["track_id"] for item in failed}
    kept = [(int(track_id), key) for track_id, key in zip(tracks["track_id"], keys) if int(track_id) not in failed_ids]
    cached = [load_file(cache / f"{key}.safetensors") for _, key in kept]
    with atomic_path(out_dir / LATENTS_FILE) as tmp:
        save_file({"mean": torch.stack([item["mean"] for item in cached]),
                   "std": torch.stack([item["std"] for item in cached]), "track_ids": torch.tensor([t for t, _ in kept], dtype=torch.int64)}, tmp,
                  metadata={"codec": codec_id})
    with atomic_path(out_dir / FAILED_FILE) as tmp:
        pd.DataFrame(failed, columns=["track_id", "reason"]).to_parquet(tmp, index=False)
    if failed:
        logger.warning("latents: %d track(s) failed to decode, e.g. %s", len(failed), failed[0]["reason"])
    return {"tracks": len(kept), "computed": len(missing) - len(failed), "failed": len(failed)}


def load_latents(out_dir: Path) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(track ids, [N, C, H, W] posterior means, [N, C, H, W] stds) written by `compute_latents`."""
    from safetensors.torch import load_file

    data = load_file(Path(out_dir) / LATENTS_FILE)
    return data["track_ids"].tolist(), data["mean"], data["std"]
