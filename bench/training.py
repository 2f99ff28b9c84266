"""Aligner training: steps that read the caches against steps that encode their batch.

Targets: a step from the cached image embeddings and latents at least 10x faster than one that
decodes and encodes its own batch (images through the frozen image encoder; the tracks' MP3 crops
through the mel front-end and the prior's codec), and at least 90 % of the cached step spent in
the model: aligner -> GPT-2 -> UNet forward, backward, gradient clipping and the AdamW step
(gathering the batch from the cache is the rest).

Both paths run what the `train` stage runs (`aligner_loss`, AdamW, grad clip) on the default
recipe: tiny backbone, tiny image encoder and `train.batch_size` (64), with 2 torch threads (quick: the caller's). The
parts are untrained: a step's cost does not depend on the weights. The two paths' steps alternate,
so machine load falls on both alike, and each part's time is its median over the timed steps.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from art2mus.config import AudioParams, BackboneParams, EncoderSpec, SampleParams, TrainParams
from art2mus.data.latents import crop_log_mel
from art2mus.data.sample import fma_track_path, make_sample
from art2mus.features.media import decode_image
from art2mus.models.audio import mel_transform
from art2mus.models.backbone import Backbone, LatentCodec
from art2mus.models.encoders import ImageEncoder, load_image_encoder
from art2mus.models.tiny import build_tiny_backbone
from art2mus.training.aligner import aligner_loss, new_aligner, step_generator

logger = logging.getLogger(__name__)

THREADS = 2
TARGET_SPEEDUP = 10.0
TARGET_MODEL_FRACTION = 0.9
PARTS = ("gather", "forward", "backward", "optimizer")

Batch = tuple[torch.Tensor, torch.Tensor]  # image embeddings [B, D], latents [B, C, H, W]


def make_pairs(root: Path, n_artworks: int) -> tuple[list[Path], list[Path]]:
    """A sample of `n_artworks` pairs; (image paths, track paths), pair i at index i."""
    make_sample(SampleParams(n_artworks=n_artworks, n_extra_tracks=0, n_artists=max(3, n_artworks // 8)),
                AudioParams(), root)
    pairs = pd.read_csv(root / "artsound_pairs.csv")
    images = [root / "artgraph" / "imagesf2" / name for name in pairs["artwork_id"]]
    tracks = [root / "fma" / fma_track_path(int(track_id)) for track_id in pairs["track_id"]]
    return images, tracks


def encode_images(paths: list[Path], encoder: ImageEncoder) -> torch.Tensor:
    """Decode and embed images as the features stage does."""
    embeds = encoder.embed_images([decode_image(path.read_bytes()) for path in paths])
    return embeds.clone()  # out of inference mode, so autograd may save it as the aligner's input


@torch.no_grad()
def encode_tracks(
    paths: list[Path], codec: LatentCodec, audio: AudioParams, transform: torch.nn.Module
) -> torch.Tensor:
    """Decode the tracks' crops, take their log-mels and encode them as the latents stage does."""
    return codec.encode(torch.stack([crop_log_mel(path, audio, transform) for path in paths]))


def timed_step(
    aligner: torch.nn.Module, optimizer: torch.optim.Optimizer, backbone: Backbone,
    gather: Callable[[torch.Tensor], Batch], n_pairs: int, step: int, params: TrainParams,
) -> dict[str, float]:
    """One optimisation step as train_aligner takes it; seconds spent in each of PARTS."""
    started = time.perf_counter()
    indices = torch.randint(n_pairs, (params.batch_size,), generator=step_generator(params.seed, step))
    image_embeds, latents = gather(indices)
    gathered = time.perf_counter()
    loss = aligner_loss(aligner, backbone, image_embeds, latents, step_generator(params.seed, step * 1000 + 1),
                        params.min_snr_gamma)
    forward = time.perf_counter()
    loss.backward()
    backward = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(aligner.parameters(), params.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    done = time.perf_counter()
    return {"gather": gathered - started, "forward": forward - gathered, "backward": backward - forward,
            "optimizer": done - backward}


def path_summary(steps: list[dict[str, float]]) -> dict:
    """Median seconds per part (robust to another process's burst), their sum per step, steps per second."""
    parts = {part: statistics.median(step[part] for step in steps) for part in PARTS}
    seconds = sum(parts.values())
    return {"steps_per_s": 1.0 / seconds, "seconds_per_step": seconds, "parts_seconds_per_step": parts}


def goal(value: float, target: float) -> dict:
    """A figure against its target (larger is better)."""
    return {"value": value, "target": target, "met": bool(value >= target)}


def run(quick: bool = False) -> dict:
    n_artworks, batch_size, n_steps = (8, 4, 1) if quick else (128, TrainParams().batch_size, 5)
    params = TrainParams(batch_size=batch_size)
    audio = AudioParams()
    threads = torch.get_num_threads()
    n_threads = threads if quick else THREADS  # quick: the caller's, so it never oversubscribes the cores
    torch.set_num_threads(n_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="art2mus-bench-") as tmp:
            logger.info("training bench: sample of %d pairs", n_artworks)
            images, tracks = make_pairs(Path(tmp) / "sample", n_artworks)
            backbone = build_tiny_backbone(BackboneParams(), audio).eval()
            encoder = load_image_encoder(EncoderSpec(name="tiny"))
            transform = mel_transform(audio)

            started = time.perf_counter()
            cached_embeds = encode_images(images, encoder)
            cached_latents = encode_tracks(tracks, backbone.codec, audio, transform)
            precompute_seconds = time.perf_counter() - started

            gathers: dict[str, Callable[[torch.Tensor], Batch]] = {
                "cached": lambda idx: (cached_embeds[idx], cached_latents[idx]),
                "encoding": lambda idx: (encode_images([images[i] for i in idx.tolist()], encoder),
                                         encode_tracks([tracks[i] for i in idx.tolist()], backbone.codec, audio,
                                                       transform)),
            }
            models = {}
            for name in gathers:  # each path trains its own aligner from the same initial weights
                aligner = new_aligner(encoder.dim, backbone.lm_width, params)
                optimizer = torch.optim.AdamW(aligner.parameters(), lr=params.lr, weight_decay=params.weight_decay)
                models[name] = (aligner, optimizer)
            timings: dict[str, list[dict[str, float]]] = {name: [] for name in gathers}
            for step in range(n_steps + 1):  # step 0 warms up both paths and is not counted
                for name, gather in gathers.items():
                    aligner, optimizer = models[name]
                    parts = timed_step(aligner, optimizer, backbone, gather, n_artworks, step, params)
                    if step:
                        timings[name].append(parts)
                logger.info("training bench: step %d of %d", step, n_steps)
    finally:
        torch.set_num_threads(threads)

    cached, encoding = path_summary(timings["cached"]), path_summary(timings["encoding"])
    speedup = encoding["seconds_per_step"] / cached["seconds_per_step"]
    model_fraction = 1.0 - cached["parts_seconds_per_step"]["gather"] / cached["seconds_per_step"]
    return {
        "benchmark": "training",
        "pairs": n_artworks,
        "batch_size": batch_size,
        "steps_timed": n_steps,
        "threads": n_threads,
        "precompute_seconds": precompute_seconds,
        "cached": cached,
        "encoding": encoding,
        "cached_vs_encoding_speedup": speedup,
        "cached_model_fraction": model_fraction,
        "goals": {
            "cached_vs_encoding_speedup": goal(speedup, TARGET_SPEEDUP),
            "cached_model_fraction": goal(model_fraction, TARGET_MODEL_FRACTION),
        },
    }
