"""Frozen encoders: tiny real architectures round-trip through the real loaders, and keep the planted factors."""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from art2mus.config import AudioParams, EncoderSpec, SampleParams
from art2mus.data.sample import FACTORS, make_sample
from art2mus.errors import Art2MusError
from art2mus.features.media import decode_audio_crop
from art2mus.models.encoders import (
    EncoderRef,
    build_tiny_audio_embedder,
    build_tiny_image_encoder,
    encoder_id_for,
    load_audio_embedder,
    load_image_encoder,
    resolve_device,
    save_imagebind,
    seeded_build,
)
from tests.tiny_model import tiny_clap

AUDIO = AudioParams()
PROBE_SAMPLE = {"seed": 11, "n_artworks": 120, "n_extra_tracks": 0, "n_artists": 12, "image_size": 128,
                "track_seconds": 3.2}
# Chance is 1/4 (palette) and 1/3 (texture, composition); measured (5-fold CV, seed-11 sample):
# image 1.00 / 1.00 / 0.93, audio 1.00 / 0.99 / 0.98.
MIN_PROBE_ACCURACY = {
    "image": {"palette": 0.9, "texture": 0.85, "composition": 0.7},
    "audio": {"palette": 0.9, "texture": 0.85, "composition": 0.85},
}
TINY_IMAGEBIND = {
    "out_embed_dim": 32,
    "vision_embed_dim": 64, "vision_num_blocks": 2, "vision_num_heads": 4,
    "audio_embed_dim": 64, "audio_num_blocks": 2, "audio_num_heads": 4,
    "text_embed_dim": 32, "text_num_blocks": 1, "text_num_heads": 2,
    "depth_embed_dim": 32, "depth_num_blocks": 1, "depth_num_heads": 2,
    "thermal_embed_dim": 32, "thermal_num_blocks": 1, "thermal_num_heads": 2,
    "imu_embed_dim": 32, "imu_num_blocks": 1, "imu_num_heads": 2,
}


def noise_images(n: int, size: tuple[int, int] = (96, 72)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def tones(n: int, seconds: float = 2.56, rate: int = 16000) -> list[np.ndarray]:
    t = np.arange(round(seconds * rate)) / rate
    return [(0.3 * np.sin(2 * np.pi * (220.0 * (k + 1)) * t)).astype(np.float32) for k in range(n)]


def require_imagebind() -> None:
    """Skip without ImageBind locally; under CI (CI=true) its absence is a failure."""
    if importlib.util.find_spec("imagebind") is None or importlib.util.find_spec("pytorchvideo") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("ImageBind is not installed, and CI must test it: "
                        "pip install -c constraints.txt -e '.[imagebind]'")
        pytest.skip("ImageBind not installed (pip install -e '.[imagebind]')")


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub access at all: an empty HF cache and offline mode, and torch.hub downloads fail."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)  # no ./.checkpoints/imagebind_huge.pth either

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


# ---- shapes, determinism, round trips -----------------------------------------------------------
def test_tiny_encoders_are_deterministic_batched_float32_and_leave_the_rng_alone() -> None:
    state = torch.random.get_rng_state()
    image, audio = load_image_encoder(EncoderSpec()), load_audio_embedder(EncoderSpec())
    assert torch.equal(torch.random.get_rng_state(), state)
    images, waves = noise_images(3), tones(3)
    first_images, first_audio = image.embed_images(images), audio.embed_audio(waves, 16000)
    assert first_images.shape == (3, image.dim) and first_images.dtype == torch.float32
    assert first_audio.shape == (3, audio.dim) and first_audio.dtype == torch.float32
    again_image, again_audio = load_image_encoder(EncoderSpec()), load_audio_embedder(EncoderSpec())
    assert again_image.encoder_id == image.encoder_id and image.encoder_id.startswith("tiny:")
    assert torch.equal(again_image.embed_images(images), first_images)
    assert torch.equal(again_audio.embed_audio(waves, 16000), first_audio)
    assert image.shared_space is None and audio.shared_space is None
    assert not image.model.training and not audio.model.training
    # Raw embeddings (callers normalise), other modes converted to RGB, other rates resampled.
    assert not torch.allclose(first_images.norm(dim=1), torch.ones(3))
    grey = image.embed_images([images[0].convert("L")])
    assert torch.equal(grey, image.embed_images([images[0].convert("L").convert("RGB")]))
    audio_22k = audio.embed_audio(tones(1, rate=22050), 22050)
    assert torch.allclose(audio_22k, first_audio[:1], atol=0.05, rtol=0.05)
    assert image.embed_images([]).shape == (0, image.dim)


def test_tiny_and_clip_load_back_from_save_pretrained(tmp_path: Path) -> None:
    built = build_tiny_image_encoder()
    built.save_pretrained(tmp_path / "clip")
    images = noise_images(4)
    expected = built.embed_images(images)
    for kind in ("clip", "tiny"):
        loaded = load_image_encoder(EncoderSpec(name=kind, source=str(tmp_path / "clip")))
        assert loaded.encoder_id.startswith(f"{kind}:local@")
        assert loaded.dim == built.dim
        assert torch.equal(loaded.embed_images(images), expected)


def test_loading_an_encoder_shows_no_library_progress_bar(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """transformers' "Loading weights" bar filled the evaluate stage's log (a stage shows its own progress)."""
    build_tiny_image_encoder().save_pretrained(tmp_path / "clip")
    capfd.readouterr()
    load_image_encoder(EncoderSpec(name="clip", source=str(tmp_path / "clip")))
    assert "Loading weights" not in "".join(capfd.readouterr())


def test_tiny_audio_loads_back_from_save_pretrained(tmp_path: Path) -> None:
    built = build_tiny_audio_embedder()
    built.save_pretrained(tmp_path / "audio")
    loaded = load_audio_embedder(EncoderSpec(name="tiny", source=str(tmp_path / "audio")))
    waves = tones(3)
    assert loaded.dim == built.dim and loaded.sample_rate == 16000
    assert torch.equal(loaded.embed_audio(waves, 16000), built.embed_audio(waves, 16000))


def claim_float64(directory: Path) -> None:
    """Make a saved model's config.json name float64, as some hub configs do."""
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("dtype", None)
    config["torch_dtype"] = "float64"
    config_file.write_text(json.dumps(config))


def test_saved_models_load_as_float32_whatever_their_config_says(tmp_path: Path) -> None:
    # transformers 5 loads a config's dtype unless told otherwise; the loaders always ask for float32.
    image, audio = build_tiny_image_encoder(), build_tiny_audio_embedder()
    image.save_pretrained(tmp_path / "clip")
    audio.save_pretrained(tmp_path / "audio")
    claim_float64(tmp_path / "clip")
    claim_float64(tmp_path / "audio")
    images, waves = noise_images(2), tones(2)
    for kind in ("clip", "tiny"):
        loaded = load_image_encoder(EncoderSpec(name=kind, source=str(tmp_path / "clip")))
        assert loaded.model.dtype == torch.float32
        embeddings = loaded.embed_images(images)
        assert embeddings.dtype == torch.float32 and torch.equal(embeddings, image.embed_images(images))
    loaded_audio = load_audio_embedder(EncoderSpec(name="tiny", source=str(tmp_path / "audio")))
    assert loaded_audio.model.dtype == torch.float32
    assert torch.equal(loaded_audio.embed_audio(waves, 16000), audio.embed_audio(waves, 16000))


def test_auto_device_is_cuda_when_visible_unless_art2mus_device_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ART2MUS_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setenv("ART2MUS_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    encoder = load_image_encoder(EncoderSpec(), device="auto")
    assert encoder.device == "cpu" and EncoderRef(EncoderSpec(), "audio", "auto").load().device == "cpu"


def test_clap_loads_back_from_save_pretrained(tmp_path: Path) -> None:
    built = tiny_clap()
    built.save_pretrained(tmp_path / "clap")
    claim_float64(tmp_path / "clap")
    loaded = load_audio_embedder(EncoderSpec(name="clap", source=str(tmp_path / "clap")))
    assert loaded.model.dtype == torch.float32
    waves = tones(3, seconds=2.56)  # longer than the extractor's 2 s window: cut, never randomly
    expected = built.embed_audio(waves, 16000)
    assert expected.shape == (3, 32) and loaded.dim == 32 and loaded.encoder_id.startswith("clap:local@")
    assert torch.equal(loaded.embed_audio(waves, 16000), expected)
    assert torch.equal(loaded.embed_audio(waves, 16000), expected)  # deterministic


def test_imagebind_tiny_round_trip_matches_the_packages_own_preprocessing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_imagebind()
    from art2mus.models.encoders import import_imagebind

    imagebind_model = import_imagebind()
    from imagebind import data

    model = seeded_build(lambda: imagebind_model.ImageBindModel(**TINY_IMAGEBIND)).eval()
    save_imagebind(model, TINY_IMAGEBIND, tmp_path / "tiny.pth")
    spec = EncoderSpec(name="imagebind", source=str(tmp_path / "tiny.pth"))
    image_encoder, audio_embedder = load_image_encoder(spec), load_audio_embedder(spec)
    assert image_encoder.shared_space == audio_embedder.shared_space == "imagebind"
    assert image_encoder.dim == audio_embedder.dim == 32
    assert image_encoder.encoder_id == audio_embedder.encoder_id == encoder_id_for(spec, "image")

    images = noise_images(3)
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    waves = tones(2)
    # imagebind.data reads audio with torchaudio.load (torchcodec + FFmpeg): hand it our waveforms.
    handed = iter([torch.from_numpy(wave.copy()).unsqueeze(0) for wave in waves])
    monkeypatch.setattr(data.torchaudio, "load", lambda path: (next(handed), 16000))
    with torch.inference_mode():
        expected = model({"vision": data.load_and_transform_vision_data(paths, "cpu"),
                          "audio": data.load_and_transform_audio_data(["a.mp3", "b.mp3"], "cpu")})
    assert torch.equal(image_encoder.embed_images(images), expected["vision"])
    assert torch.equal(audio_embedder.embed_audio(waves, 16000), expected["audio"])


def test_imagebind_without_usable_weights_is_a_clear_error(offline_hub: None, tmp_path: Path) -> None:
    require_imagebind()
    save_imagebind(torch.nn.Linear(2, 2), TINY_IMAGEBIND, tmp_path / "broken.pth")  # wrong weights, right sizes
    with pytest.raises(Art2MusError, match="not a matching ImageBind checkpoint"):
        load_image_encoder(EncoderSpec(name="imagebind", source=str(tmp_path / "broken.pth")))
    expected = "not found locally and cannot be downloaded here.*features.image_encoder.source"
    with pytest.raises(Art2MusError, match=expected):
        load_image_encoder(EncoderSpec(name="imagebind"))
    with pytest.raises(Art2MusError, match="features.audio_embedder.source"):
        load_audio_embedder(EncoderSpec(name="imagebind"))


# ---- identity and errors -----------------------------------------------------------------------
def test_encoder_ids_name_the_weights(tmp_path: Path) -> None:
    build_tiny_image_encoder(seed=0).save_pretrained(tmp_path / "a")
    build_tiny_image_encoder(seed=0).save_pretrained(tmp_path / "copy-of-a")
    build_tiny_image_encoder(seed=1).save_pretrained(tmp_path / "b")
    ids = {name: encoder_id_for(EncoderSpec(name="clip", source=str(tmp_path / name)), "image")
           for name in ("a", "copy-of-a", "b")}
    assert ids["a"] == ids["copy-of-a"] != ids["b"]
    assert encoder_id_for(EncoderSpec(name="clip"), "image") == "clip:openai/clip-vit-large-patch14@main"
    pinned = EncoderSpec(name="clap", revision="abc123")
    assert encoder_id_for(pinned, "audio") == "clap:laion/clap-htsat-unfused@abc123"
    assert encoder_id_for(EncoderSpec(name="imagebind"), "audio") == "imagebind:imagebind_huge"
    ref = EncoderRef(EncoderSpec(name="imagebind"), "image")
    assert ref.shared_space == "imagebind" and EncoderRef(EncoderSpec(), "audio").shared_space is None


def test_clear_errors_for_unknown_kinds_missing_paths_and_offline_hub_ids(tmp_path: Path, offline_hub: None) -> None:
    with pytest.raises(Art2MusError, match="unknown image encoder kind 'clap'"):
        load_image_encoder(EncoderSpec(name="clap"))
    with pytest.raises(Art2MusError, match="unknown audio embedder kind 'clip'"):
        load_audio_embedder(EncoderSpec(name="clip"))
    with pytest.raises(Art2MusError, match="does not exist.*features.image_encoder.source"):
        load_image_encoder(EncoderSpec(name="clip", source=str(tmp_path / "missing")))
    with pytest.raises(Art2MusError, match="does not exist.*features.audio_embedder.source"):
        load_audio_embedder(EncoderSpec(name="imagebind", source=str(tmp_path / "missing.pth")))
    with pytest.raises(Art2MusError, match="weights for clip 'openai/clip-vit-large-patch14' not found locally"
                                           ".*features.image_encoder.source"):
        load_image_encoder(EncoderSpec(name="clip"))
    with pytest.raises(Art2MusError, match="weights for clap 'laion/clap-htsat-unfused' not found locally"
                                           ".*features.audio_embedder.source"):
        load_audio_embedder(EncoderSpec(name="clap"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(Art2MusError, match="holds no model files"):
        load_image_encoder(EncoderSpec(name="clip", source=str(tmp_path / "empty")))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a model")
    with pytest.raises(Art2MusError, match="is not a saved clip model"):
        load_image_encoder(EncoderSpec(name="clip", source=str(tmp_path / "junk")))
    build_tiny_image_encoder().save_pretrained(tmp_path / "image-model")
    with pytest.raises(Art2MusError, match="not a tiny audio embedder|is not a saved tiny model"):
        load_audio_embedder(EncoderSpec(name="tiny", source=str(tmp_path / "image-model")))


# ---- the planted factors survive the tiny encoders ------------------------------------------------
@pytest.fixture(scope="module")
def probe_sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("probe") / "sample"
    make_sample(SampleParams(**PROBE_SAMPLE), AUDIO, root)
    factors = pd.read_csv(root / "factors.csv")
    return root, factors[factors["kind"] == "pair"].reset_index(drop=True)


def probe_accuracy(embeddings: torch.Tensor, labels: pd.Series) -> float:
    """5-fold cross-validated accuracy of a logistic-regression probe."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return float(cross_val_score(probe, embeddings.numpy(), labels, cv=5).mean())


def test_a_linear_probe_recovers_every_planted_factor_from_tiny_image_embeddings(probe_sample) -> None:
    root, factors = probe_sample
    encoder = load_image_encoder(EncoderSpec())
    batches = []
    for start in range(0, len(factors), 32):
        names = factors["artwork_id"][start: start + 32]
        batches.append(encoder.embed_images([Image.open(root / "artgraph" / "imagesf2" / name) for name in names]))
    embeddings = torch.cat(batches)
    accuracy = {factor: probe_accuracy(embeddings, factors[factor]) for factor in FACTORS}
    assert all(accuracy[f] >= MIN_PROBE_ACCURACY["image"][f] for f in FACTORS), accuracy


def test_a_linear_probe_recovers_every_planted_factor_from_tiny_audio_embeddings(probe_sample) -> None:
    root, factors = probe_sample
    embedder = load_audio_embedder(EncoderSpec())
    batches = []
    for start in range(0, len(factors), 32):
        waves = []
        for track_id in factors["track_id"][start: start + 32]:
            name = f"{track_id:06d}"
            data = (root / "fma" / "fma_large" / name[:3] / f"{name}.mp3").read_bytes()
            waves.append(decode_audio_crop(data, AUDIO))  # the model's crop
        batches.append(embedder.embed_audio(waves, AUDIO.sample_rate))
    embeddings = torch.cat(batches)
    accuracy = {factor: probe_accuracy(embeddings, factors[factor]) for factor in FACTORS}
    assert all(accuracy[f] >= MIN_PROBE_ACCURACY["audio"][f] for f in FACTORS), accuracy
