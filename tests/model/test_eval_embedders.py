"""Evaluation embedders and scores on tiny real models: FAD rows per window, ImageBindScore, tagger KL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.special import softmax
from scipy.stats import entropy

from art2mus.config import AudioParams, EncoderSpec
from art2mus.errors import Art2MusError
from art2mus.evaluation.embedders import (
    VGGISH_PCA,
    VGGISH_WEIGHTS,
    SpectralEmbedder,
    WindowedEmbedder,
    embed_file,
    embed_folder,
    embed_waveforms,
    load_frame_embedder,
    metric_name,
)
from art2mus.evaluation.scores import (
    AstAudioTagger,
    image_bind_score,
    image_bind_score_of,
    kl_score,
    label_kl,
    load_audio_tagger,
    tagger_kl,
)
from art2mus.models.audio import AudioDecodeError, log_mel
from art2mus.models.encoders import (
    build_tiny_audio_embedder,
    build_tiny_image_encoder,
    load_audio_embedder,
    load_image_encoder,
    save_imagebind,
    seeded_build,
)
from tests.model.test_encoders import TINY_IMAGEBIND, noise_images, require_imagebind
from tests.tiny_model import tiny_clap

RATE = 16000


def tone(seconds: float, frequency: float = 440.0, rate: int = RATE, shape: str = "sine") -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    wave = np.sin(2 * np.pi * frequency * t)
    if shape == "square":
        wave = np.sign(wave)
    return (0.3 * wave).astype(np.float32)


def noise(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).normal(size=round(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_imagebind(tmp_path_factory: pytest.TempPathFactory) -> EncoderSpec:
    require_imagebind()
    from art2mus.models.encoders import import_imagebind

    imagebind_model = import_imagebind()
    path = tmp_path_factory.mktemp("imagebind") / "tiny.pth"
    save_imagebind(seeded_build(lambda: imagebind_model.ImageBindModel(**TINY_IMAGEBIND)).eval(), TINY_IMAGEBIND, path)
    return EncoderSpec(name="imagebind", source=str(path))


# ---- FAD embedders ------------------------------------------------------------------------------
def test_spectral_rows_are_audioldm2_log_mels_and_deltas_every_fourth_frame() -> None:
    embedder = SpectralEmbedder()
    wave = tone(1.0)
    rows = embedder.embed_frames(wave, RATE)
    assert rows.shape == (25, 128) and rows.dtype == np.float32  # 100 frames of 10 ms, one row per 40 ms
    mel = log_mel(torch.from_numpy(wave)[None], AudioParams())[0].double().numpy()  # [100, 64]
    np.testing.assert_allclose(rows[:, :64], mel[::4], rtol=1e-6, atol=1e-6)
    # deltas: the 5-frame regression (c[t+1] - c[t-1] + 2 (c[t+2] - c[t-2])) / 10, checked away from the edges
    deltas = (mel[3:-1] - mel[1:-3] + 2 * (mel[4:] - mel[:-4])) / 10  # frames 2..97
    np.testing.assert_allclose(rows[1:-1, 64:], deltas[2:-2:4], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(embedder.embed_frames(wave, RATE), rows)
    resampled = embedder.embed_frames(tone(1.0, rate=44100), 44100)  # resampled to 16 kHz first
    np.testing.assert_allclose(resampled[3:-3, :64], rows[3:-3, :64], atol=0.1)
    with pytest.raises(AudioDecodeError, match="too short for one frame"):
        embedder.embed_frames(tone(0.005), RATE)
    assert metric_name(embedder.name) == "fad_spectral" and "stride4" in embedder.embedder_id


def test_windowed_tiny_embedder_gives_one_row_per_window_and_a_tail() -> None:
    tiny = build_tiny_audio_embedder()
    embedder = load_frame_embedder("tiny")
    assert isinstance(embedder, WindowedEmbedder) and embedder.dim == tiny.dim and embedder.window_seconds == 1.0
    wave = noise(3.6, seed=0)
    rows = embedder.embed_frames(wave, RATE)
    windows = [wave[0:16000], wave[16000:32000], wave[32000:48000], wave[-16000:]]  # 0.6 s tail >= half a window
    np.testing.assert_allclose(rows, tiny.embed_audio(windows, RATE).numpy(), rtol=1e-5, atol=1e-6)
    assert embedder.embed_frames(noise(3.3, seed=0), RATE).shape == (3, tiny.dim)  # 0.3 s tail dropped
    assert embedder.embed_frames(noise(0.5, seed=0), RATE).shape == (1, tiny.dim)  # shorter than a window


def test_clap_rows_are_clap_embeddings_of_its_own_window(tmp_path: Path) -> None:
    tiny_clap().save_pretrained(tmp_path / "clap")
    embedder = load_frame_embedder("clap", str(tmp_path / "clap"))
    clap = load_audio_embedder(EncoderSpec(name="clap", source=str(tmp_path / "clap")))
    assert embedder.window_seconds == 2.0 and embedder.embedder_id.startswith(clap.encoder_id)
    wave = noise(5.0, seed=1)
    rows = embedder.embed_frames(wave, RATE)
    expected = clap.embed_audio([wave[:32000], wave[32000:64000], wave[-32000:]], RATE).numpy()
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)


def test_imagebind_rows_use_its_two_second_clips(tiny_imagebind: EncoderSpec) -> None:
    embedder = load_frame_embedder("imagebind", tiny_imagebind.source)
    audio = load_audio_embedder(tiny_imagebind)
    wave = noise(4.2, seed=2)
    rows = embedder.embed_frames(wave, RATE)
    assert rows.shape == (2, 32) and embedder.name == "imagebind"  # 0.2 s tail dropped
    np.testing.assert_allclose(rows, audio.embed_audio([wave[:32000], wave[32000:64000]], RATE).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_unknown_embedders_and_misplaced_options_are_clear_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(Art2MusError, match=f"no weights at {tmp_path / 'hub' / 'checkpoints' / VGGISH_WEIGHTS}"):
        load_frame_embedder("vggish")
    with pytest.raises(Art2MusError, match=f"no weights at {tmp_path / 'vggish.pth'}"):
        load_frame_embedder("vggish", str(tmp_path / "vggish.pth"))
    with pytest.raises(Art2MusError, match=f"no weights at {tmp_path / VGGISH_WEIGHTS}"):
        load_frame_embedder("vggish", str(tmp_path))  # a folder: the release's file name inside it
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(Art2MusError, match="junk.pth: not a VGGish weights file"):
        load_frame_embedder("vggish", str(tmp_path / "junk.pth"))
    with pytest.raises(Art2MusError, match="unknown fad embedder 'inception'"):
        load_frame_embedder("inception")
    with pytest.raises(Art2MusError, match="has no weights"):
        load_frame_embedder("spectral", "some/model")
    with pytest.raises(Art2MusError, match="postprocess is VGGish's PCA step"):
        load_frame_embedder("spectral", postprocess=True)


# ---- VGGish: torchvggish's network and front-end, weights from a local state dict ------------------
@pytest.fixture(scope="module")
def vggish_dir(module_tmp: Path) -> Path:
    """A seeded, randomly initialised VGGish saved as the release's state dict (and a PCA file beside it)."""
    from torchvggish.torchvggish import _vgg

    folder = module_tmp / "vggish"
    folder.mkdir()
    torch.manual_seed(0)
    torch.save(_vgg(postprocess=False).state_dict(), folder / VGGISH_WEIGHTS)
    rng = np.random.default_rng(0)
    # The release pickles numpy arrays, not tensors: keep that format.
    torch.save({"pca_eigen_vectors": np.linalg.qr(rng.normal(size=(128, 128)))[0], "pca_means": rng.normal(size=128)},
               folder / VGGISH_PCA)
    return folder


def test_vggish_rows_are_deterministic_128d_per_096s_example(vggish_dir: Path) -> None:
    from torchvggish.torchvggish import _vgg
    from torchvggish.vggish_input import waveform_to_examples

    embedder = load_frame_embedder("vggish", str(vggish_dir / VGGISH_WEIGHTS))
    assert embedder.name == "vggish" and embedder.dim == 128 and embedder.sample_rate == 16000
    assert embedder.embedder_id.startswith(f"vggish:{VGGISH_WEIGHTS}@")
    wave = noise(3.0, seed=1)
    rows = embedder.embed_frames(wave, RATE)
    assert rows.shape == (3, 128) and rows.dtype == np.float32  # three non-overlapping 0.96 s examples
    np.testing.assert_array_equal(rows, load_frame_embedder("vggish", str(vggish_dir)).embed_frames(wave, RATE))
    # the same numbers as torchvggish's own network and front-end on the same state dict
    model = _vgg(postprocess=False).eval()
    model.load_state_dict(torch.load(vggish_dir / VGGISH_WEIGHTS, weights_only=True))
    with torch.no_grad():
        expected = model(waveform_to_examples(wave.astype(np.float64), RATE)).numpy()
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
    # resampled to 16 kHz first: a 32 kHz copy gives (nearly) the same rows
    doubled = np.interp(np.arange(len(wave) * 2) / 2, np.arange(len(wave)), wave).astype(np.float32)
    assert embedder.embed_frames(doubled, 2 * RATE).shape == (3, 128)
    with pytest.raises(AudioDecodeError, match="too short for one VGGish example"):
        embedder.embed_frames(noise(0.9, seed=2), RATE)


def test_vggish_postprocessing_applies_the_pca_file(vggish_dir: Path, tmp_path: Path) -> None:
    raw = load_frame_embedder("vggish", str(vggish_dir)).embed_frames(noise(2.0, seed=3), RATE)
    processed = load_frame_embedder("vggish", str(vggish_dir), postprocess=True)
    assert processed.embedder_id.endswith("+pca")
    rows = processed.embed_frames(noise(2.0, seed=3), RATE)
    assert rows.shape == (2, 128) and np.all(rows == np.round(rows)) and 0 <= rows.min() and rows.max() <= 255
    assert not np.allclose(rows, raw)
    (tmp_path / VGGISH_WEIGHTS).write_bytes((vggish_dir / VGGISH_WEIGHTS).read_bytes())
    with pytest.raises(Art2MusError, match=f"no PCA params at {tmp_path / VGGISH_PCA}"):
        load_frame_embedder("vggish", str(tmp_path), postprocess=True)


def test_vggish_fad_on_folders_names_the_metric(vggish_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from art2mus.cli.main import app

    for name, seed in (("ref", 0), ("gen", 10)):
        (tmp_path / name).mkdir()
        for index in range(3):
            sf.write(tmp_path / name / f"{index}.wav", noise(2.0, seed=seed + index), RATE)
    result = CliRunner().invoke(app, ["fad", str(tmp_path / "ref"), str(tmp_path / "gen"), "--embedder", "vggish",
                                      "--source", str(vggish_dir), "--n-boot", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["name"] == "fad_vggish" and report["dim"] == 128 and report["value"] >= 0
    assert report["embedder_id"].startswith("vggish:") and report["valid"] is False  # 6 rows are too few


def test_embed_folder_embeds_every_readable_file_and_lists_the_rest(tmp_path: Path) -> None:
    (tmp_path / "set" / "nested").mkdir(parents=True)
    (tmp_path / "set" / ".hidden").mkdir()
    sf.write(tmp_path / "set" / "a.wav", tone(1.0), RATE)
    sf.write(tmp_path / "set" / "nested" / "b.flac", tone(0.6, 330.0, rate=22050), 22050)
    sf.write(tmp_path / "set" / "short.wav", tone(0.05), RATE)
    sf.write(tmp_path / "set" / ".hidden" / "c.wav", tone(1.0), RATE)
    (tmp_path / "set" / "broken.mp3").write_bytes(b"ID3 but nothing else")
    (tmp_path / "set" / "empty.wav").write_bytes(b"")
    (tmp_path / "set" / "notes.txt").write_text("not audio, not listed")
    embedder = SpectralEmbedder()
    embedded = embed_folder(tmp_path / "set", embedder, quiet=True)
    assert embedded.files == ["a.wav", "nested/b.flac"]
    assert set(embedded.failed) == {"short.wav", "broken.mp3", "empty.wav"}
    assert "too short" in embedded.failed["short.wav"] and embedded.failed["empty.wav"] == "zero-byte file"
    assert "cannot decode audio" in embedded.failed["broken.mp3"]
    for index, name in enumerate(embedded.files):
        expected = embed_file(tmp_path / "set" / name, embedder)
        np.testing.assert_array_equal(embedded.rows[embedded.clips == index], expected)
    assert embedded.rows.shape == (25 + 15, 128) and embedded.dim == 128
    in_memory = embed_waveforms([tone(1.0), tone(0.01), tone(0.6, 330.0)], RATE, embedder, ["x", "tiny", "z"])
    assert in_memory.files == ["x", "z"] and "too short" in in_memory.failed["tiny"]
    np.testing.assert_array_equal(in_memory.rows[in_memory.clips == 1], embedder.embed_frames(tone(0.6, 330.0), RATE))
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no audio here")
    with pytest.raises(Art2MusError, match="no audio files"):
        embed_folder(tmp_path / "texts", embedder)
    with pytest.raises(Art2MusError, match="not a folder"):
        embed_folder(tmp_path / "missing", embedder)


# ---- ImageBindScore -----------------------------------------------------------------------------
def test_image_bind_score_on_tiny_imagebind_matches_paired_cosines(tiny_imagebind: EncoderSpec) -> None:
    image_encoder, audio_embedder = load_image_encoder(tiny_imagebind), load_audio_embedder(tiny_imagebind)
    images = noise_images(5)
    generated = [tone(2.0, 220.0 * (k + 1)) for k in range(5)]
    references = [tone(2.0, 220.0 * (k + 1), shape="square") for k in range(5)]
    score = image_bind_score_of(audio_embedder, generated, RATE, image_encoder=image_encoder, images=images,
                                references=references, n_boot=500, batch_size=2)
    image_embeds = image_encoder.embed_images(images)
    generated_embeds = audio_embedder.embed_audio(generated, RATE)
    reference_embeds = audio_embedder.embed_audio(references, RATE)
    expected_am = torch.nn.functional.cosine_similarity(image_embeds, generated_embeds).mean().item()
    expected_mm = torch.nn.functional.cosine_similarity(reference_embeds, generated_embeds).mean().item()
    assert score.am.value == pytest.approx(expected_am, abs=1e-5)
    assert score.mm.value == pytest.approx(expected_mm, abs=1e-5)
    assert score.am.low <= score.am.value <= score.am.high and score.mm.low <= score.mm.value <= score.mm.high
    assert score.space == "imagebind" and score.n == 5 and score.as_dict()["am"]["value"] == score.am.value
    identical = image_bind_score_of(audio_embedder, generated, RATE, references=generated, n_boot=100)
    assert identical.am is None and identical.mm.value == pytest.approx(1.0, abs=1e-5)
    # ImageBind image vs a tiny (unaligned) audio embedder: same question, no shared space -> refused
    with pytest.raises(Art2MusError, match="one declared shared space"):
        image_bind_score_of(build_tiny_audio_embedder(), generated, RATE, image_encoder=image_encoder, images=images)


def test_image_bind_score_refuses_encoders_without_a_shared_space() -> None:
    rng = np.random.default_rng(0)
    generated, images = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))  # same sizes, still meaningless
    with pytest.raises(Art2MusError, match="one declared shared space"):
        image_bind_score(generated, images=images, image_space=None, audio_space=None)
    with pytest.raises(Art2MusError, match="one declared shared space"):
        image_bind_score_of(build_tiny_audio_embedder(), [tone(1.0)], RATE, image_encoder=build_tiny_image_encoder(),
                            images=noise_images(1))
    mm_only = image_bind_score(generated, references=generated * 2.0, n_boot=50)
    assert mm_only.am is None and mm_only.mm.value == pytest.approx(1.0)
    with pytest.raises(Art2MusError, match="zero-length embedding"):
        image_bind_score(np.zeros((2, 8)), references=generated[:2])


# ---- tagger KL ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tagger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       max_length=128, num_mel_bins=64, frequency_stride=16, time_stride=16, num_labels=6)
    extractor = ASTFeatureExtractor(num_mel_bins=64, max_length=128)
    path = tmp_path_factory.mktemp("tagger") / "ast"
    model = seeded_build(lambda: ASTForAudioClassification(config))
    AstAudioTagger(model, extractor, "in-memory").save_pretrained(path)
    return path


def test_label_kl_is_the_kl_of_the_softmaxed_labels() -> None:
    rng = np.random.default_rng(1)
    ref, gen = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    expected = [entropy(softmax(r), softmax(g)) for r, g in zip(ref, gen)]
    np.testing.assert_allclose(label_kl(ref, gen), expected, rtol=1e-10)
    np.testing.assert_allclose(label_kl(ref, ref + 5.0), 0.0, atol=1e-12)  # a shift of all logits is no change


def test_tagger_kl_on_a_tiny_ast(tiny_tagger_path: Path) -> None:
    tagger = load_audio_tagger(str(tiny_tagger_path))
    assert tagger.tagger_id.startswith("ast:local@")
    references = [tone(1.2, 220.0 * (k + 1)) for k in range(4)]
    others = [noise(1.2, seed=k) for k in range(4)]
    same = tagger_kl(tagger, references, references, RATE, n_boot=100)
    assert same.status == "ok" and same.value.value == pytest.approx(0.0, abs=1e-9)
    differ = kl_score(references, others, RATE, str(tiny_tagger_path), n_boot=100, batch_size=3)
    logits_ref, logits_gen = tagger.label_logits(references, RATE), tagger.label_logits(others, RATE)
    assert differ.status == "ok" and differ.value.value == pytest.approx(label_kl(logits_ref, logits_gen).mean())
    assert differ.value.value > 0 and differ.n == 4 and differ.as_dict()["tagger_id"] == tagger.tagger_id


def test_tagger_kl_is_absent_with_the_reason(tmp_path: Path) -> None:
    absent = kl_score([tone(1.0)], [tone(1.0)], RATE)
    assert absent.status == "absent" and "no audio tagger configured" in absent.reason and absent.value is None
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a model")
    broken = kl_score([tone(1.0)], [tone(1.0)], RATE, str(tmp_path / "junk"))
    assert broken.status == "absent" and "is not a saved ASTForAudioClassification" in broken.reason
    assert broken.as_dict()["value"] is None
