"""The latents cache holds each track's posterior (mean, std); training samples it per step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from art2mus.config import AudioParams, BackboneParams, TrainParams
from art2mus.data.latents import CACHE_DIR, LatentPosteriors, cache_key, compute_latents, load_latent_index
from art2mus.models.aligner import state_dict_sha256
from art2mus.models.audio import CROP_VERSION
from art2mus.models.tiny import build_tiny_backbone
from art2mus.training import aligner as aligner_module
from art2mus.training.aligner import AlignerData, StreamedPairs, train_aligner

AUDIO = AudioParams()


@pytest.fixture(scope="module")
def backbone():
    return build_tiny_backbone(BackboneParams(), AUDIO, seed=0).eval()


class NoisyCodec(torch.nn.Module):
    """The tiny codec with a nonzero posterior std (as a VAE's)."""

    def __init__(self, codec: torch.nn.Module) -> None:
        super().__init__()
        self.codec = codec
        self.calls = 0

    def encode_distribution(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += len(mel)
        mean = self.codec.encode(mel)
        return mean, torch.full_like(mean, 0.5)


class FakeBackbone:
    def __init__(self, codec: torch.nn.Module) -> None:
        self.codec = codec
        self.info = {"identity": "noisy-codec"}


def write_tracks(root: Path, n: int) -> pd.DataFrame:
    import soundfile as sf

    rows = []
    for i in range(n):
        wave = (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * np.arange(4 * AUDIO.sample_rate) / AUDIO.sample_rate))
        path = root / f"{i}.wav"
        sf.write(path, wave.astype(np.float32), AUDIO.sample_rate)
        rows.append({"track_id": i, "path": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return pd.DataFrame(rows)


def test_the_cache_keeps_mean_and_std_and_ignores_latents_cached_as_the_mode(backbone, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "fma").mkdir()
    tracks = write_tracks(tmp_path / "fma", 3)
    codec = NoisyCodec(backbone.codec)
    out = tmp_path / "latents"
    # What an older cache held: the posterior's mode under a key without the posterior setting.
    (out / CACHE_DIR).mkdir(parents=True)
    for sha in tracks["sha256"]:
        settings = json.dumps({"codec": "noisy-codec", "crop_version": CROP_VERSION,
                               **AUDIO.model_dump(mode="json")}, sort_keys=True)
        old_key = hashlib.sha256(f"{sha}:{settings}".encode()).hexdigest()
        assert old_key != cache_key(sha, "noisy-codec", AUDIO)
        save_file({"latent": torch.zeros(backbone.latent_shape)}, out / CACHE_DIR / f"{old_key}.safetensors")

    summary = compute_latents(tracks, tmp_path / "fma", FakeBackbone(codec), AUDIO, out, quiet=True, shard_rows=2)
    assert summary["computed"] == 3 and codec.calls == 3
    assert summary["shards_pruned"] == 3  # the older cache's files
    index = load_latent_index(out)
    assert index["track_id"].tolist() == [0, 1, 2] and index["shard"].nunique() == 2  # 2 + 1 rows
    posteriors = LatentPosteriors.from_index(out, index)
    for i in range(3):
        mean, std = posteriors[i]
        assert mean.shape == std.shape == backbone.latent_shape
        assert bool((std == 0.5).all()) and float(mean.abs().sum()) > 0
        assert index["sha256"][i] == latents_row_sha256(mean, std)

    assert compute_latents(tracks, tmp_path / "fma", FakeBackbone(codec), AUDIO, out, quiet=True)["computed"] == 0
    assert codec.calls == 3  # cached posteriors are reused

    # The shard folder is a DVC output, versioned whole: shards no current track uses are pruned.
    kept = compute_latents(tracks.head(2), tmp_path / "fma", FakeBackbone(codec), AUDIO, out, quiet=True,
                           shard_rows=2)
    assert kept["computed"] == 0 and kept["shards_pruned"] == 1
    assert sorted(p.name for p in (out / CACHE_DIR).glob("shard-*")) == sorted(set(load_latent_index(out)["shard"]))


def latents_row_sha256(mean: torch.Tensor, std: torch.Tensor) -> str:
    from art2mus.data.latents import row_sha256

    return row_sha256(mean, std)


def test_training_streamed_from_shards_equals_training_from_memory(backbone, tmp_path: Path) -> None:
    from art2mus.data.latents import write_shard

    generator = torch.Generator().manual_seed(0)
    n = 10
    embeds = torch.randn(n, 8, generator=generator)
    means = torch.randn(n, *backbone.latent_shape, generator=generator)
    stds = torch.rand(n, *backbone.latent_shape, generator=generator) * 0.3
    (tmp_path / "cache").mkdir()
    located = {}
    for start in range(0, n, 4):
        keys = [f"k{i}" for i in range(start, min(n, start + 4))]
        located.update(write_shard(tmp_path / "cache", keys, list(means[start:start + 4]), list(stds[start:start + 4])))
    shards, rows = zip(*[located[f"k{i}"][:2] for i in range(n)])
    streamed = StreamedPairs(embeds, LatentPosteriors(tmp_path / "cache", list(shards), list(rows)))
    params = TrainParams(steps=3, batch_size=4, grad_accum=2, warmup_steps=1, checkpoint_every=100, tokens=2,
                         hidden_dim=16)
    from_memory = train_aligner(AlignerData(embeds, means, stds), backbone, params, tmp_path / "a", quiet=True)
    from_shards = train_aligner(streamed, backbone, params, tmp_path / "b", quiet=True)
    assert state_dict_sha256(from_shards.aligner) == state_dict_sha256(from_memory.aligner)
    assert from_shards.losses == from_memory.losses


def recorded_latents(backbone, data: AlignerData, steps: int, out: Path, monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    original = aligner_module.aligner_loss

    def recording(aligner, backbone, image_embeds, latents, *args):
        seen.append(latents.detach().clone())
        return original(aligner, backbone, image_embeds, latents, *args)

    monkeypatch.setattr(aligner_module, "aligner_loss", recording)
    params = TrainParams(steps=steps, batch_size=2, warmup_steps=1, checkpoint_every=100, tokens=2, hidden_dim=16)
    train_aligner(data, backbone, params, out, quiet=True)
    return seen


def test_each_step_draws_its_own_posterior_sample(backbone, tmp_path: Path, monkeypatch) -> None:
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(1, *backbone.latent_shape, generator=generator)
    data = AlignerData(torch.randn(1, 8, generator=generator), mean, torch.full_like(mean, 0.5))
    first = recorded_latents(backbone, data, 2, tmp_path / "a", monkeypatch)
    again = recorded_latents(backbone, data, 1, tmp_path / "b", monkeypatch)
    assert not torch.equal(first[0], first[1])  # the same pair, two steps: two samples
    assert not torch.equal(first[0][0], first[0][1])  # the pair drawn twice in one batch: two samples
    assert torch.equal(again[0], first[0])  # the same step draws the same sample
    residual = (first[0] - mean) / 0.5
    assert abs(float(residual.mean())) < 0.1 and abs(float(residual.std()) - 1) < 0.1
    # Zero std (the tiny codec) trains on the means exactly.
    exact = recorded_latents(backbone, AlignerData(data.image_embeds, mean, torch.zeros_like(mean)), 1,
                             tmp_path / "c", monkeypatch)
    assert torch.equal(exact[0], mean.expand(2, -1, -1, -1))
