"""The real profile's loader on a tiny AudioLDM2 with the real checkpoint's quirks, built offline from configs.

The checkpoint is `art2mus.rehearsal.checkpoints.save_audioldm2(size="tiny")`: the real hub layout and
config files at toy sizes, with what the real `cvssp/audioldm2-music` has — `model_index.json` declaring
the language model a `GPT2Model` (GPT2Model weights, no LM head), CLAP's config saying float64, weights
stored in fp16 — so every test here goes through the loading path a real user's checkpoint takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from art2mus.config import BackboneParams
from art2mus.models.aligner import ImageAligner
from art2mus.models.audioldm2 import LatentCodecAdapter, load_audioldm2_backbone, load_pipeline
from art2mus.models.backbone import Backbone, BackboneError
from art2mus.models.encoders import build_tiny_image_encoder
from art2mus.models.loader import load_backbone, source_identity, write_backbone_reference
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig
from art2mus.rehearsal.checkpoints import save_audioldm2

MAX_NEW_TOKENS = 8
N_MELS = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quirky tiny AudioLDM2-music folder (fp16 on disk, as a halved real one would be)."""
    return save_audioldm2(tmp_path_factory.mktemp("hub") / "audioldm2-music", size="tiny", store_dtype=torch.float16)


@pytest.fixture(scope="module")
def backbone(checkpoint: Path) -> Backbone:
    return load_audioldm2_backbone(str(checkpoint), "main", MAX_NEW_TOKENS)


def test_the_toy_checkpoint_has_the_real_quirks(checkpoint: Path) -> None:
    index = json.loads((checkpoint / "model_index.json").read_text())
    assert index["language_model"] == ["transformers", "GPT2Model"]
    assert json.loads((checkpoint / "text_encoder" / "config.json").read_text())["torch_dtype"] == "float64"


def test_the_language_model_has_its_head_and_every_part_is_float32(backbone: Backbone) -> None:
    # Before: diffusers loaded the declared GPT2Model, which cannot generate (AttributeError in
    # encode_prompt), and CLAP in float64 ("mat1 and mat2 must have the same dtype").
    from transformers import GPT2LMHeadModel

    assert isinstance(backbone.language_model, GPT2LMHeadModel)
    for part in (backbone.unet, backbone.language_model, backbone.codec.vae, backbone.vocoder):
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    assert backbone.t5_embeds.dtype == backbone.null_loa.dtype == torch.float32


def test_the_head_model_holds_exactly_the_declared_gpt2_weights(checkpoint: Path, backbone: Backbone) -> None:
    from transformers import GPT2Model

    declared = GPT2Model.from_pretrained(checkpoint / "language_model", dtype=torch.float32).eval()
    inputs = torch.randn(2, 5, backbone.lm_width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = declared(inputs_embeds=inputs).last_hidden_state
        got = backbone.language_model.transformer(inputs_embeds=inputs).last_hidden_state
    assert torch.equal(got, expected)


def test_the_constant_streams_are_the_empty_prompts_and_the_null_is_zeros(checkpoint: Path,
                                                                          backbone: Backbone) -> None:
    pipe = load_pipeline(str(checkpoint), "main")
    with torch.no_grad():
        t5, mask, empty_loa = pipe.encode_prompt("", torch.device("cpu"), 1, False, max_new_tokens=MAX_NEW_TOKENS)
    assert backbone.t5_embeds.shape == (1, 1, t5.shape[-1]) and backbone.t5_mask.tolist() == [[1]]
    assert torch.allclose(backbone.t5_embeds, t5)
    assert backbone.info["null_conditioning"] == "zeros" and not backbone.null_loa.any()
    assert backbone.null_loa.shape == (1, MAX_NEW_TOKENS, backbone.lm_width)
    empty = load_audioldm2_backbone(str(checkpoint), "main", MAX_NEW_TOKENS, null_conditioning="empty_prompt")
    assert torch.allclose(empty.null_loa, empty_loa, atol=1e-6) and empty.null_loa.abs().sum() > 0
    with pytest.raises(BackboneError, match="null_conditioning"):
        load_audioldm2_backbone(str(checkpoint), "main", MAX_NEW_TOKENS, null_conditioning="ones")


def test_the_prior_works_at_its_own_length(backbone: Backbone) -> None:
    info = backbone.info
    assert (info["sample_rate"], info["n_mels"], info["hop_length"]) == (16000, N_MELS, 160)
    assert info["crop_frames"] == 1024  # 10.24 s
    assert backbone.latent_shape == (8, 256, 16)  # AudioLDM2-music's 8 x 256 x 16


def test_the_codec_gives_the_posterior_for_training_and_its_mean_for_evaluation(backbone: Backbone) -> None:
    mel = torch.randn(2, 32, N_MELS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean, std = backbone.codec.encode_distribution(mel)
        mode = backbone.codec.encode(mel)
        decoded = backbone.codec.decode(mode)
    assert isinstance(backbone.codec, LatentCodecAdapter)
    assert mean.shape == std.shape == (2, 8, 8, 16) and (std > 0).all()
    assert torch.allclose(mean, mode) and decoded.shape == mel.shape


def test_language_of_audio_is_differentiable(backbone: Backbone) -> None:
    inputs = torch.randn(2, 4, backbone.lm_width, requires_grad=True)
    loa = backbone.language_of_audio(inputs)
    assert loa.shape == (2, MAX_NEW_TOKENS, backbone.lm_width)
    loa.square().mean().backward()
    assert inputs.grad is not None and torch.isfinite(inputs.grad).all() and inputs.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.language_model.parameters())


def test_generation_gives_exactly_the_requested_samples(backbone: Backbone) -> None:
    encoder = build_tiny_image_encoder()
    torch.manual_seed(0)
    pipeline = Art2MusPipeline(encoder, ImageAligner(image_dim=encoder.dim, lm_width=backbone.lm_width), backbone)
    images = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 200))]
    config = GenerationConfig(scheduler="ddim", steps=2, guidance_scale=3.0, seconds=0.3, batch_size=2)
    waves = pipeline(images, config)
    # HiFi-GAN's output is longer than frames x hop (163,872 for 163,840 at 10.24 s): trimmed exactly.
    assert [wave.shape for wave in waves] == [(round(0.3 * 16000),)] * 2
    assert all(wave.dtype == np.float32 and np.isfinite(wave).all() for wave in waves)
    again = pipeline(images, config)
    assert all(np.array_equal(a, b) for a, b in zip(waves, again))  # seeded CPU draws


def test_an_aligner_for_another_image_width_is_refused(backbone: Backbone) -> None:
    encoder = build_tiny_image_encoder()
    with pytest.raises(Exception, match=r"features\.image_encoder"):
        Art2MusPipeline(encoder, ImageAligner(image_dim=encoder.dim + 1, lm_width=backbone.lm_width), backbone)


def test_offline_hub_id_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(BackboneError, match=r"cvssp/audioldm2-music.*backbone\.source to a local copy"):
        load_audioldm2_backbone("cvssp/audioldm2-music", "main", MAX_NEW_TOKENS)


def test_a_local_folder_without_a_pipeline_raises_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"model_index\.json.*backbone\.source"):
        load_audioldm2_backbone(str(tmp_path), "main", MAX_NEW_TOKENS)


def test_the_reference_pins_the_hub_revision_and_hashes_a_local_folder(checkpoint: Path, tmp_path: Path) -> None:
    from art2mus.config import PINNED_REVISION
    from art2mus.io import sha256_tree

    assert source_identity("cvssp/audioldm2-music", PINNED_REVISION) == f"cvssp/audioldm2-music@{PINNED_REVISION}"
    write_backbone_reference(BackboneParams(profile="audioldm2", source=str(checkpoint),
                                            max_new_tokens=MAX_NEW_TOKENS), tmp_path / "prior")
    recorded = json.loads((tmp_path / "prior" / "backbone.json").read_text())
    assert recorded["identity"] == f"local@{sha256_tree(checkpoint)}" and recorded["null_conditioning"] == "zeros"
    assert (tmp_path / "prior" / "conditioning.safetensors").is_file()


def test_the_text_encoders_run_once_in_the_prior_stage(checkpoint: Path, backbone: Backbone, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_backbone_reference(BackboneParams(profile="audioldm2", source=str(checkpoint),
                                            max_new_tokens=MAX_NEW_TOKENS), tmp_path / "prior")

    def no_text_encoders(*args, **kwargs):
        raise AssertionError("a later load must not run CLAP and T5 again")

    monkeypatch.setattr("art2mus.models.audioldm2.empty_prompt_streams", no_text_encoders)
    loaded = load_backbone(tmp_path / "prior")
    assert loaded.info["source"] == str(checkpoint) and isinstance(loaded.codec, LatentCodecAdapter)
    assert torch.equal(loaded.t5_embeds, backbone.t5_embeds) and torch.equal(loaded.null_loa, backbone.null_loa)
    for mine, theirs in [(loaded.unet, backbone.unet), (loaded.language_model, backbone.language_model)]:
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    (tmp_path / "prior" / "conditioning.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(BackboneError, match=r"conditioning\.safetensors: unreadable.*prior"):
        load_backbone(tmp_path / "prior")
