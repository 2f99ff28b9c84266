"""The real profile's loader on a tiny AudioLDM2Pipeline of the real architectures, built offline in code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from art2mus.models.aligner import ImageAligner
from art2mus.models.audioldm2 import LatentCodecAdapter, load_audioldm2_backbone
from art2mus.models.backbone import AUDIOLDM2_SCHEDULE, Backbone, BackboneError
from art2mus.models.encoders import build_tiny_image_encoder
from art2mus.models.pipeline import Art2MusPipeline, GenerationConfig

N_MELS = 64
LM_WIDTH = 32
T5_WIDTH = 16
CLAP_DIM = 16
LATENT_CHANNELS = 4
MAX_NEW_TOKENS = 8
MAX_LENGTH = 16  # both tokenizers' model_max_length


def roberta_tokenizer(folder: Path):
    """A byte-level BPE RobertaTokenizer from a tiny vocab.json + merges.txt written here."""
    from transformers import RobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "Ġ", *"abcdefghijklmnopqrstuvwxyz", "Ġa", "ab"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\nĠ a\na b\n")
    return RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                            model_max_length=MAX_LENGTH)


def t5_tokenizer():
    """A T5TokenizerFast around a tiny Unigram `tokenizers.Tokenizer` (</s> appended, as T5 does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), ("▁music", -1.0)]
    pieces += [(char, -3.0) for char in "abcdefghijklmnopqrstuvwxyz"]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, model_max_length=MAX_LENGTH, extra_ids=0)


def tiny_components(folder: Path) -> dict[str, Any]:
    """Every AudioLDM2Pipeline component at toy size, seeded."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import (
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
    )
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
    )

    torch.manual_seed(0)
    tokenizer = roberta_tokenizer(folder / "roberta_files")
    tokenizer_2 = t5_tokenizer()
    text_config = ClapTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, max_position_embeddings=MAX_LENGTH + 4,
        projection_dim=CLAP_DIM)
    audio_config = ClapAudioConfig(
        spec_size=8, window_size=4, num_mel_bins=8, intermediate_size=32, depths=[1, 1],
        num_attention_heads=[1, 1], num_hidden_layers=1, hidden_size=32, patch_size=2, patch_stride=2,
        patch_embed_input_channels=4, projection_dim=CLAP_DIM)
    cross = (None, LM_WIDTH, T5_WIDTH)  # self-attention, GPT-2's LOA stream, T5's stream
    return {
        "vae": AutoencoderKL(
            in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
            latent_channels=LATENT_CHANNELS, norm_num_groups=8),
        "text_encoder": ClapModel(ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(),
                                          projection_dim=CLAP_DIM)),
        "text_encoder_2": T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=T5_WIDTH, d_ff=32, d_kv=8, num_heads=2, num_layers=1)),
        "projection_model": AudioLDM2ProjectionModel(
            text_encoder_dim=CLAP_DIM, text_encoder_1_dim=T5_WIDTH, langauge_model_dim=LM_WIDTH),
        "language_model": GPT2LMHeadModel(GPT2Config(
            n_embd=LM_WIDTH, n_head=2, n_layer=1, vocab_size=8, n_positions=2 * MAX_LENGTH + 16)),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "feature_extractor": ClapFeatureExtractor(),
        "unet": AudioLDM2UNet2DConditionModel(
            in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32), layers_per_block=1,
            norm_num_groups=8, cross_attention_dim=(cross, cross), attention_head_dim=4),
        "scheduler": DDIMScheduler(**AUDIOLDM2_SCHEDULE),
        "vocoder": SpeechT5HifiGan(SpeechT5HifiGanConfig(
            model_in_dim=N_MELS, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[8, 5, 4],
            upsample_kernel_sizes=[16, 10, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
            normalize_before=False)),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The tiny pipeline in memory and its `save_pretrained` folder."""
    from diffusers import AudioLDM2Pipeline

    root = tmp_path_factory.mktemp("audioldm2")
    pipe = AudioLDM2Pipeline(**tiny_components(root))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as from_pretrained leaves them (T5 and GPT-2 have dropout)
    pipe.save_pretrained(root / "audioldm2")
    return pipe, root / "audioldm2"


@pytest.fixture(scope="module")
def backbone(saved: tuple[Any, Path]) -> Backbone:
    return load_audioldm2_backbone(str(saved[1]), "main", MAX_NEW_TOKENS)


def test_loaded_parts_equal_the_saved_ones(saved: tuple[Any, Path], backbone: Backbone) -> None:
    pipe, _ = saved
    assert isinstance(backbone.codec, LatentCodecAdapter)
    for mine, theirs in [(backbone.unet, pipe.unet), (backbone.language_model, pipe.language_model),
                         (backbone.codec.vae, pipe.vae), (backbone.vocoder, pipe.vocoder)]:
        assert mine is not theirs
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, LATENT_CHANNELS, 8, N_MELS // 2, generator=generator)
    loa = torch.randn(2, MAX_NEW_TOKENS, LM_WIDTH, generator=generator)
    t5 = torch.randn(2, 3, T5_WIDTH, generator=generator)
    mask = torch.ones(2, 3, dtype=torch.long)
    timesteps = torch.tensor([10, 500])
    with torch.no_grad():
        expected = pipe.unet(latents, timesteps, encoder_hidden_states=loa, encoder_hidden_states_1=t5,
                             encoder_attention_mask_1=mask).sample
        got = backbone.unet(latents, timesteps, encoder_hidden_states=loa, encoder_hidden_states_1=t5,
                            encoder_attention_mask_1=mask).sample
        assert torch.equal(got, expected)
        assert backbone.predict(latents, timesteps, loa).shape == latents.shape


def test_conditioning_streams_come_from_the_empty_prompt(saved: tuple[Any, Path], backbone: Backbone) -> None:
    pipe, _ = saved
    with torch.no_grad():
        t5, mask, loa = pipe.encode_prompt("", torch.device("cpu"), 1, False, max_new_tokens=MAX_NEW_TOKENS)
    assert backbone.t5_embeds.shape == (1, 1, T5_WIDTH)  # the empty prompt is T5's lone </s>
    assert backbone.t5_mask.tolist() == [[1]]
    assert backbone.null_loa.shape == (1, MAX_NEW_TOKENS, LM_WIDTH)
    assert torch.allclose(backbone.t5_embeds, t5) and torch.equal(backbone.t5_mask, mask)
    assert torch.allclose(backbone.null_loa, loa, atol=1e-6)


def test_info_describes_the_audio_and_latents(backbone: Backbone) -> None:
    info = backbone.info
    assert info["profile"] == "audioldm2" and info["max_new_tokens"] == MAX_NEW_TOKENS
    assert (info["sample_rate"], info["n_mels"], info["hop_length"]) == (16000, N_MELS, 160)
    assert info["crop_frames"] == 1024  # 10.24 s
    assert backbone.latent_shape == (LATENT_CHANNELS, 512, N_MELS // 2)
    assert backbone.lm_width == LM_WIDTH


def test_language_of_audio_is_differentiable(backbone: Backbone) -> None:
    inputs = torch.randn(2, 4, LM_WIDTH, requires_grad=True)
    loa = backbone.language_of_audio(inputs)
    assert loa.shape == (2, MAX_NEW_TOKENS, LM_WIDTH)
    loa.square().mean().backward()
    assert inputs.grad is not None and torch.isfinite(inputs.grad).all() and inputs.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.language_model.parameters())


def test_codec_round_trip_and_vocoder_shapes(backbone: Backbone) -> None:
    mel = torch.randn(2, 20, N_MELS)
    with torch.no_grad():
        latents = backbone.codec.encode(mel)
        assert latents.shape == (2, LATENT_CHANNELS, 10, N_MELS // 2)
        decoded = backbone.codec.decode(latents)
        assert decoded.shape == mel.shape
        wave = backbone.vocoder(decoded)
    # HiFi-GAN's transposed convolutions may add a few samples (AudioLDM2's own does); generation crops them.
    assert wave.shape[0] == 2 and 0 <= wave.shape[1] - 20 * 160 < 160


def test_art2mus_pipeline_generates_with_the_loaded_backbone(backbone: Backbone) -> None:
    encoder = build_tiny_image_encoder()
    torch.manual_seed(0)
    aligner = ImageAligner(image_dim=encoder.dim, lm_width=backbone.lm_width)
    pipeline = Art2MusPipeline(encoder, aligner, backbone)
    images = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 200))]
    config = GenerationConfig(scheduler="ddim", steps=2, guidance_scale=3.0, seconds=0.2, batch_size=2)
    waves = pipeline(images, config)
    assert len(waves) == 2
    for wave in waves:
        assert wave.shape == (round(0.2 * 16000),) and wave.dtype == np.float32 and np.isfinite(wave).all()


def test_offline_hub_id_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(BackboneError, match=r"cvssp/audioldm2-music.*backbone\.source to a local copy"):
        load_audioldm2_backbone("cvssp/audioldm2-music", "main", MAX_NEW_TOKENS)


def test_a_local_folder_without_a_pipeline_raises_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"model_index\.json.*backbone\.source"):
        load_audioldm2_backbone(str(tmp_path), "main", MAX_NEW_TOKENS)


def test_the_prior_stage_reference_loads_the_real_profile_through_load_backbone(
    saved: tuple[Any, Path], tmp_path: Path
) -> None:
    from art2mus.config import BackboneParams
    from art2mus.models.backbone import load_backbone, write_backbone_reference

    _, folder = saved
    write_backbone_reference(BackboneParams(profile="audioldm2", source=str(folder), max_new_tokens=MAX_NEW_TOKENS),
                             tmp_path / "prior")
    backbone = load_backbone(tmp_path / "prior")
    assert backbone.info["profile"] == "audioldm2" and backbone.info["source"] == str(folder)
    assert isinstance(backbone.codec, LatentCodecAdapter)
