"""Generation from a packaged model: lengths, schedulers, and bad images handled one by one."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from typer.testing import CliRunner

from art2mus.cli.main import app
from art2mus.config import AudioParams, BackboneParams, EncoderSpec
from art2mus.models.aligner import ImageAligner
from art2mus.models.encoders import build_tiny_image_encoder
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig, save_model
from art2mus.models.tiny import build_tiny_backbone, save_tiny_backbone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packaged model of tiny parts (untrained: these tests check plumbing, not music)."""
    root = tmp_path_factory.mktemp("model")
    backbone = build_tiny_backbone(BackboneParams(), AudioParams(), seed=0)
    save_tiny_backbone(backbone, root / "prior")
    encoder = build_tiny_image_encoder()
    aligner = ImageAligner(image_dim=encoder.dim, lm_width=backbone.lm_width, tokens=4, hidden_dim=32)
    save_model(root / "art2mus", aligner, root / "prior", EncoderSpec(name="tiny"), {"note": "test"})
    return root / "art2mus"


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name in ("sunset.jpg", "sea.png"):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"this is not a picture")
    paths.append(tmp_path / "broken.jpg")
    return paths


@pytest.mark.parametrize("scheduler", ["dpmsolver++", "ddim"])
def test_pipeline_generates_the_requested_length(model_dir: Path, scheduler: str) -> None:
    pipeline = Art2MusPipeline.from_pretrained(model_dir)
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    for seconds in (None, 1.0, 4.0):
        config = GenerationConfig(scheduler=scheduler, steps=3, seconds=seconds, batch_size=2)
        waves = pipeline([image, image], config)
        expected = round((seconds or 2.56) * 16000)
        assert [len(w) for w in waves] == [expected, expected]
        assert all(np.isfinite(w).all() and w.dtype == np.float32 for w in waves)


def test_generation_is_seeded(model_dir: Path) -> None:
    pipeline = Art2MusPipeline.from_pretrained(model_dir)
    image = Image.new("RGB", (40, 40), (20, 30, 200))
    a = pipeline([image], GenerationConfig(steps=3, seed=1))[0]
    b = pipeline([image], GenerationConfig(steps=3, seed=1))[0]
    c = pipeline([image], GenerationConfig(steps=3, seed=2))[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_cli_writes_one_wav_per_good_image_and_names_the_bad_one(model_dir: Path, images: list[Path],
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", *map(str, images), "-o", str(out), "--model", str(model_dir),
                                      "--steps", "3", "--seconds", "1.5", "--quiet"])
    assert result.exit_code == 1
    assert "broken.jpg: not an image" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["sea.wav", "sunset.wav"]
    data, rate = sf.read(out / "sunset.wav")
    assert rate == 16000 and len(data) == 24000


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` 1-bit pixels and holds almost none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_cli_reports_decompression_bombs_by_name_and_generates_the_rest(model_dir: Path, images: list[Path],
                                                                        tmp_path: Path) -> None:
    """Over twice Pillow's pixel limit is an error in Pillow; over the limit only a warning: both are refused."""
    (tmp_path / "bomb.png").write_bytes(png_header_only(20_000, 20_000))  # 400 Mpx > 2 x MAX_IMAGE_PIXELS
    (tmp_path / "big.png").write_bytes(png_header_only(10_000, 10_000))  # 100 Mpx > MAX_IMAGE_PIXELS
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "bomb.png"), *map(str, images[:2]),
                                      str(tmp_path / "big.png"), "-o", str(out), "--model", str(model_dir),
                                      "--steps", "2", "--seconds", "0.5", "--quiet"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert "bomb.png: too many pixels to decode safely" in result.output
    assert "big.png: too many pixels to decode safely" in result.output
    assert "2 of 4 image(s) failed" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["sea.wav", "sunset.wav"]


def unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:  # root writes anywhere a mode allows: use a file system that refuses files (sysfs)
        Path("/sys", "art2mus-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no folder this user cannot write")


@pytest.mark.parametrize("case, message", [
    ("file", "is a file, not a folder"),
    ("below_a_file", "cannot create the output folder"),
    ("unwritable", "cannot write in the output folder"),
])
def test_cli_checks_the_output_folder_before_loading_the_model(tmp_path: Path, images: list[Path], case: str,
                                                               message: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    out = {"file": tmp_path / "a-file", "below_a_file": tmp_path / "a-file" / "out",
           "unwritable": unwritable_folder(tmp_path)}[case]
    result = CliRunner().invoke(app, ["generate", str(images[0]), "-o", str(out), "--model",
                                      str(tmp_path / "no-such-model")])  # the model is never reached
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"art2mus: generate: {out}: {message}" in result.output and "Traceback" not in result.output
    assert "no-such-model" not in result.output


def test_cli_prints_a_file_name_with_a_newline_escaped(model_dir: Path, images: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "evil\nart2mus: generate: all fine.jpg"
    bad.write_bytes(b"not a picture")
    good = tmp_path / "two\nlines.png"
    good.write_bytes(images[1].read_bytes())
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", str(bad), str(good), "-o", str(out), "--model", str(model_dir),
                                      "--steps", "2", "--seconds", "0.5", "--quiet"])
    assert result.exit_code == 1
    assert "evil\\nart2mus: generate: all fine.jpg" in result.output and "two\\nlines.wav" in result.output
    assert not any(line.startswith(("art2mus: generate: all fine", "lines")) for line in result.output.splitlines())
    assert [p.name for p in out.iterdir()] == ["two\nlines.wav"]


def test_cli_refuses_a_folder_that_is_not_a_model(tmp_path: Path, images: list[Path]) -> None:
    result = CliRunner().invoke(app, ["generate", str(images[0]), "-o", str(tmp_path / "o"),
                                      "--model", str(tmp_path)])
    assert result.exit_code == 1
    assert "not an art2mus model" in result.output


def test_the_limiter_only_ever_scales_down() -> None:
    from art2mus.models.pipeline import limit_peaks

    quiet, loud = np.full(8, 0.2, dtype=np.float32), np.linspace(-27, 27, 8, dtype=np.float32)
    out = limit_peaks(np.stack([quiet, loud]))
    assert np.array_equal(out[0], quiet)
    assert np.isclose(np.abs(out[1]).max(), 0.99) and np.allclose(out[1] / out[1].max(), loud / loud.max())


def test_decoded_mels_stay_within_the_priors_train_range() -> None:
    """An overshooting sample is clamped per mel bin to what the codec was fitted on; in-range ones pass unchanged."""
    from art2mus.models.audio import MelCodec

    codec = MelCodec(n_mels=64, frames=256, fold_time=8, fold_mel=4)
    mels = torch.randn(6, 256, 64) - 4
    codec.fit(mels)
    latents = codec.encode(mels)
    assert torch.allclose(codec.decode_in_range(latents), mels, atol=1e-5)
    wild = codec.decode_in_range(latents * 40)
    assert torch.all(wild <= codec.high + 1e-6) and torch.all(wild >= codec.low - 1e-6)
    assert torch.allclose(codec.high, mels.reshape(-1, 64).max(0).values)


def test_model_crop_is_the_same_clip_everywhere(tmp_path: Path) -> None:
    """features (decoding only the prefix), latents and the prior read one crop: offset, length, peak 0.5."""
    from art2mus.features.media import decode_audio_crop
    from art2mus.models.audio import model_crop, read_mono

    audio = AudioParams()
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(4 * 22050) * np.linspace(0.1, 0.9, 4 * 22050)).astype(np.float32)
    sf.write(tmp_path / "track.wav", np.stack([wave, wave * 0.5], axis=1), 22050)  # stereo, another rate
    whole = model_crop(read_mono(tmp_path / "track.wav", audio.sample_rate), audio)
    prefix = decode_audio_crop((tmp_path / "track.wav").read_bytes(), audio)
    assert len(whole) == len(prefix) == audio.crop_samples
    assert np.abs(whole).max() == pytest.approx(0.5) and np.abs(prefix).max() == pytest.approx(0.5)
    assert np.allclose(whole, prefix, atol=2e-3)  # resampling a prefix differs only at its far edge


@pytest.mark.parametrize("uri", ["http://example.invalid/model", "https://example.invalid/m.tar", "ftp://x/y",
                                 "gs://bucket/model", "runs:", "models:/"])
def test_an_unsupported_model_uri_says_which_are_accepted(uri: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    result = CliRunner().invoke(app, ["evaluate", "--model", uri, "--quiet"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith(f"art2mus: evaluate: {uri}: ") and "Traceback" not in result.output
    assert "a model folder, runs:/<run id>/<path>, models:/<name>@<alias> or /<version>, s3://<bucket>/<path>" \
        in result.output
