"""The caption baseline: the text-conditioned AudioLDM2 on metadata captions, on a tiny FULL AudioLDM2.

The tiny AudioLDM2 has every part of the real one (CLAP, T5, projection, GPT-2, UNet, VAE, HiFi-GAN,
tokenizers built in code from a character vocabulary, never fetched), is written with
`save_pretrained` and read back through the project's own loader (a `prior/` reference to the
folder, as the `prior` stage writes for the real profile, inside a packaged model).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from art2mus.config import BackboneParams, EncoderSpec, EvaluateParams, Params
from art2mus.evaluation.caption_baseline import (
    CAPTION_BASELINE,
    caption_baseline,
    caption_streams,
    load_text_pipeline,
    render_captions,
)
from art2mus.evaluation.captions import (
    DEFAULT_TEMPLATE,
    FIELD_CHARS,
    metadata_caption,
    template_parts,
)
from art2mus.evaluation.evaluate import METRICS_FILE, REPORT_DIR, SplitData, comparison_table, evaluate_model
from art2mus.models.aligner import ImageAligner
from art2mus.models.backbone import BackboneError
from art2mus.models.encoders import build_tiny_image_encoder
from art2mus.models.loader import write_backbone_reference
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig, save_model
from tests.tiny_model import build_tiny_model

RATE = 16000
SECONDS = 0.32
LM_WIDTH, T5_WIDTH, CLAP_DIM, MAX_LENGTH = 16, 32, 16, 96
GENERATION = GenerationConfig(scheduler="dpmsolver++", steps=2, guidance_scale=2.5, seconds=SECONDS, seed=0,
                              batch_size=2)
METADATA = [
    {"artwork_id": "a.png", "track_id": 1, "artist": "Claude Monet", "title": "Water Lilies",
     "style": "Impressionism", "genre": "landscape", "date": "1906"},
    {"artwork_id": "b.png", "track_id": 2, "artist": "Unknown", "title": None, "style": "Baroque",
     "genre": float("nan"), "date": ""},
    {"artwork_id": "c.png", "track_id": 3, "artist": "Ann\x00 <b>Bold</b>\n\tPainter", "title": "{artist} [x]",
     "style": pd.NA, "genre": "portrait", "date": "c. 1650"},
]


def build_tiny_audioldm2(path: Path, seed: int = 0) -> Path:
    """Every AudioLDM2Pipeline part at toy size, seeded, saved with save_pretrained."""
    from diffusers import AudioLDM2Pipeline, AutoencoderKL, DDIMScheduler
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import (
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
    )
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
    )

    from art2mus.rehearsal.checkpoints import byte_level_roberta, character_t5

    torch.manual_seed(seed)
    # CLAP's RoBERTa tokenizer: byte-level, one token per byte (no merges); T5's: a character unigram.
    tokenizer = byte_level_roberta(MAX_LENGTH)
    tokenizer_2 = character_t5(MAX_LENGTH)
    text_encoder = ClapModel(ClapConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": MAX_LENGTH + 8,
                     "projection_dim": CLAP_DIM},
        audio_config={"spec_size": 64, "window_size": 4, "num_mel_bins": 64, "hidden_size": 16, "depths": [1, 1],
                      "num_attention_heads": [2, 2], "patch_stride": 2, "patch_embeds_hidden_size": 8,
                      "projection_dim": CLAP_DIM, "intermediate_size": 32},
        projection_dim=CLAP_DIM))
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=T5_WIDTH, d_kv=8, d_ff=32,
                                             num_layers=1, num_heads=2))
    language_model = GPT2LMHeadModel(GPT2Config(n_embd=LM_WIDTH, n_layer=1, n_head=2, vocab_size=2, bos_token_id=0,
                                                eos_token_id=1, n_positions=MAX_LENGTH + 16, max_new_tokens=4))
    cross = (None, LM_WIDTH, T5_WIDTH)
    unet = AudioLDM2UNet2DConditionModel(
        sample_size=None, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=(cross, cross), attention_head_dim=8)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=RATE, upsample_initial_channel=16, upsample_rates=[4, 4, 10],
        upsample_kernel_sizes=[8, 8, 20], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False))
    with torch.no_grad():  # a random HiFi-GAN whispers (~1e-7): make it audible so the scorers see a signal
        vocoder.conv_post.weight.mul_(1e6)
    pipe = AudioLDM2Pipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        projection_model=AudioLDM2ProjectionModel(text_encoder_dim=CLAP_DIM, text_encoder_1_dim=T5_WIDTH,
                                                  langauge_model_dim=LM_WIDTH),
        language_model=language_model, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        feature_extractor=ClapFeatureExtractor(feature_size=64, sampling_rate=RATE, hop_length=160, max_length_s=1),
        unet=unet, vocoder=vocoder,
        scheduler=DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                                beta_schedule="scaled_linear", clip_sample=False))
    pipe.save_pretrained(path)
    with_real_quirks(path, language_model)
    return path


def with_real_quirks(path: Path, language_model) -> None:
    """What the real cvssp/audioldm2-music folder has: GPT2Model declared and stored, CLAP's config in float64."""
    index = json.loads((path / "model_index.json").read_text())
    index["language_model"] = ["transformers", "GPT2Model"]
    (path / "model_index.json").write_text(json.dumps(index))
    for stale in (path / "language_model").iterdir():
        stale.unlink()
    language_model.transformer.save_pretrained(path / "language_model")
    clap = json.loads((path / "text_encoder" / "config.json").read_text())
    (path / "text_encoder" / "config.json").write_text(json.dumps({**clap, "torch_dtype": "float64"}))


def package_model(root: Path, source: Path) -> Path:
    """A packaged art2mus model whose prior is a reference to an AudioLDM2 folder (the real profile)."""
    write_backbone_reference(BackboneParams(profile="audioldm2", source=str(source), max_new_tokens=4), root / "prior")
    encoder = build_tiny_image_encoder()
    torch.manual_seed(0)
    aligner = ImageAligner(image_dim=encoder.dim, lm_width=LM_WIDTH, tokens=4, hidden_dim=32)
    save_model(root / "art2mus", aligner, root / "prior", EncoderSpec(name="tiny"), {"note": "test"})
    return root / "art2mus"


@pytest.fixture(scope="module")
def audioldm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_audioldm2(tmp_path_factory.mktemp("audioldm2") / "tiny-audioldm2")


@pytest.fixture(scope="module")
def real_pipeline(audioldm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Art2MusPipeline:
    return Art2MusPipeline.from_pretrained(package_model(tmp_path_factory.mktemp("model"), audioldm2_dir))


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> SplitData:
    """Three artworks (one with hostile, one with missing metadata) and their tracks."""
    root = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    images, tracks = [], []
    for index, row in enumerate(METADATA):
        images.append(root / row["artwork_id"])
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images[-1])
        tracks.append(root / f"{row['track_id']}.wav")
        t = np.arange(3 * RATE) / RATE
        sf.write(tracks[-1], 0.3 * np.sin(2 * np.pi * 220 * (index + 1) * t), RATE)
    return SplitData(pd.DataFrame(METADATA), images, tracks)


# ---- captions from metadata ---------------------------------------------------------------------
def test_captions_are_built_from_metadata_and_survive_hostile_or_missing_fields() -> None:
    full, missing, hostile = (metadata_caption(row) for row in METADATA)
    assert full == 'Music for the painting "Water Lilies" by Claude Monet, Impressionism, landscape, 1906'
    assert missing == "Music for the painting, Baroque"  # None, NaN, "" and "Unknown" are dropped with their part
    assert hostile == 'Music for the painting "artist x" by Ann bBold/b Painter, portrait, c. 1650'
    assert metadata_caption({}) == "Music for the painting"
    assert len(metadata_caption({"title": "x" * 1000})) == len('Music for the painting ""') + FIELD_CHARS
    assert metadata_caption({"title": "Sunset", "artist": "Ruth"}, "{title}: music after {artist}") == \
        "Sunset: music after Ruth"
    assert metadata_caption({"artist": "Ruth"}, "{title} by {artist}") == "by Ruth"  # required parts stay


def test_bad_caption_templates_are_refused() -> None:
    assert [optional for _, optional in template_parts(DEFAULT_TEMPLATE)] == [False] + [True] * 5
    for template, message in (("[{title}", "matching"), ("[[{title}]]", "unnested"), ("a {foo}", "unknown placeholder"),
                              ("{title!r}", "unknown placeholder"), ("plain text", "no placeholder")):
        with pytest.raises(ValueError, match=message):
            template_parts(template)
    with pytest.raises(ValueError, match="unknown placeholder"):
        EvaluateParams(caption_template="music {mood}")


# ---- the baseline on a tiny full AudioLDM2 ------------------------------------------------------
def test_the_real_loader_keeps_the_text_path_loadable(real_pipeline: Art2MusPipeline, audioldm2_dir: Path) -> None:
    backbone = real_pipeline.backbone
    assert backbone.info["profile"] == "audioldm2" and backbone.info["source"] == str(audioldm2_dir)
    text_pipeline = load_text_pipeline(backbone)
    # the backbone's own parts, not second copies; only the text side is loaded
    assert text_pipeline.unet is backbone.unet and text_pipeline.language_model is backbone.language_model
    assert text_pipeline.vae is backbone.codec.vae and text_pipeline.vocoder is backbone.vocoder
    assert text_pipeline.text_encoder.config.model_type == "clap" and not text_pipeline.text_encoder.training


def test_loading_the_text_pipeline_keeps_the_libraries_chatter_out_of_the_log(
        real_pipeline: Art2MusPipeline, capfd: pytest.CaptureFixture[str]) -> None:
    """diffusers warns about a "non-standard module" for the UNet handed to the pipeline and prints its
    whole repr: thousands of lines in the evaluate stage's log at full size."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # diffusers' loggers do not propagate to pytest's capture
    logging.getLogger("diffusers").addHandler(handler)
    capfd.readouterr()
    try:
        load_text_pipeline(real_pipeline.backbone)
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert not [record.getMessage()[:80] for record in records if record.levelno >= logging.WARNING]
    assert "Loading weights" not in "".join(capfd.readouterr())


def test_caption_baseline_generates_seeded_audio_of_the_requested_length(
        real_pipeline: Art2MusPipeline, split: SplitData) -> None:
    config = EvaluateParams()
    waves, status = caption_baseline(real_pipeline, split.pairs, config, GENERATION)
    assert status["status"] == "present" and status["template"] == DEFAULT_TEMPLATE
    assert status["captions"] == [metadata_caption(row) for row in METADATA]
    assert len(waves) == 3
    for wave in waves:
        assert wave.dtype == np.float32 and wave.shape == (round(SECONDS * RATE),) and np.isfinite(wave).all()
        assert 0 < np.abs(wave).max() <= 0.99 + 1e-6  # peak-limited as the model's own output
    again, _ = caption_baseline(real_pipeline, split.pairs.head(2), config, GENERATION)  # one batch of two
    for first, second in zip(waves, again, strict=False):
        np.testing.assert_array_equal(first, second)
    reseeded, _ = caption_baseline(real_pipeline, split.pairs.head(1), config,
                                   GenerationConfig(**{**GENERATION.__dict__, "seed": 1}))
    assert not np.allclose(waves[0], reseeded[0])


def test_the_caption_baseline_samples_against_the_backbones_null(real_pipeline: Art2MusPipeline) -> None:
    backbone = real_pipeline.backbone
    text_pipeline = load_text_pipeline(backbone)
    streams = caption_streams(text_pipeline, backbone, ["Music for a calm blue sea", "War"], guided=True)
    assert backbone.info["null_conditioning"] == "zeros"
    assert streams["negative_generated_prompt_embeds"].shape == streams["generated_prompt_embeds"].shape
    assert not streams["negative_generated_prompt_embeds"].any()  # not GPT-2's LOA of the empty prompt
    assert streams["negative_prompt_embeds"].shape == streams["prompt_embeds"].shape
    assert "negative_prompt_embeds" not in caption_streams(text_pipeline, backbone, ["War"], guided=False)


def test_the_caption_conditions_the_audio_under_the_same_noise(real_pipeline: Art2MusPipeline) -> None:
    text_pipeline = load_text_pipeline(real_pipeline.backbone)
    one = render_captions(real_pipeline, text_pipeline, ["Music for a calm blue sea"], GENERATION)[0]
    same = render_captions(real_pipeline, text_pipeline, ["Music for a calm blue sea"], GENERATION)[0]
    other = render_captions(real_pipeline, text_pipeline, ["Loud red war, 1812!"], GENERATION)[0]
    np.testing.assert_array_equal(one, same)
    assert not np.allclose(one, other)
    # sampled with the model's own sampler, not the pipeline folder's DDIM
    scheduler = text_pipeline.scheduler
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.algorithm_type == "dpmsolver++" and len(scheduler.timesteps) == GENERATION.steps


def test_evaluation_scores_the_caption_baseline_like_the_other_rows(
        real_pipeline: Art2MusPipeline, split: SplitData, tmp_path: Path) -> None:
    params = Params(evaluate={"k": 2, "draws": 1, "untrained_seeds": [1], "steps": 2, "seconds": SECONDS,
                              "fad_resamples": 0, "report_items": 1, "batch_size": 2, "guidance_scale": 2.5})
    evaluation = evaluate_model(real_pipeline, split, params, tmp_path / "evaluate")
    metrics = json.loads((tmp_path / "evaluate" / METRICS_FILE).read_text())
    assert metrics["caption_baseline"]["status"] == "present"
    assert set(metrics["generation"]) == {"trained", "mean", "untrained", CAPTION_BASELINE, "references_vocoded"}
    assert "no audio encoder" in metrics["generation_absent"]["oracle"]  # AudioLDM2: no oracle to generate from
    captions = metrics["generation"][CAPTION_BASELINE]
    assert captions["fad_spectral"]["name"] == "fad_spectral" and captions["fad_spectral"]["value"] > 0
    assert -1 <= captions["imagebind_score"]["mm"]["value"] <= 1 and captions["kl"]["status"] == "absent"
    rows = {row.model: row.metrics for row in evaluation.table}
    assert set(rows[CAPTION_BASELINE]) == {"fad_spectral", "mm"}  # no aligner: no correspondence cells
    assert CAPTION_BASELINE in (tmp_path / "evaluate" / REPORT_DIR / "index.html").read_text()


def test_the_tiny_profile_reports_the_baseline_absent_with_its_reason(split: SplitData, tmp_path: Path) -> None:
    tiny = Art2MusPipeline.from_pretrained(build_tiny_model(tmp_path))
    waves, status = caption_baseline(tiny, split.pairs, EvaluateParams(), GENERATION)
    assert waves is None and status["status"] == "absent"
    assert "tiny backbone has no language" in status["reason"] and "audioldm2" in status["reason"]
    with pytest.raises(BackboneError, match="no text encoders"):
        load_text_pipeline(tiny.backbone)
    metrics = {"correspondence": {}, "generation": {}, "caption_baseline": status}
    (row,) = comparison_table(metrics, "fad_spectral")
    assert row.model == CAPTION_BASELINE and row.metrics["fad_spectral"]["valid"] is False
    assert row.metrics["fad_spectral"]["note"].startswith("absent: the tiny backbone")


def test_caption_baseline_off_and_unloadable_text_parts_are_reported_absent(
        real_pipeline: Art2MusPipeline, split: SplitData, tmp_path: Path) -> None:
    waves, status = caption_baseline(real_pipeline, split.pairs, EvaluateParams(caption_baseline="off"), GENERATION)
    assert waves is None and status == {"status": "absent", "reason": "evaluate.caption_baseline is off"}
    info = {**real_pipeline.backbone.info, "source": str(tmp_path / "gone")}
    broken = Art2MusPipeline(real_pipeline.encoder, real_pipeline.aligner,
                             type(real_pipeline.backbone)(**{**real_pipeline.backbone.__dict__, "info": info}))
    waves, status = caption_baseline(broken, split.pairs, EvaluateParams(), GENERATION)
    assert waves is None and "text encoders cannot be loaded" in status["reason"]
    assert str(tmp_path / "gone") in status["reason"]
