"""Random-weight checkpoints from the repo's real configs: tiny ones written and read back through the real
loading code (quirks included), real ones counted on "meta" against the real profile's sizes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from art2mus.config import EncoderSpec
from art2mus.models.encoders import load_image_encoder
from art2mus.rehearsal.checkpoints import (
    AUDIOLDM2_CONFIGS,
    CLIP_CONFIGS,
    MODEL_PARTS,
    build_audioldm2,
    build_imagebind,
    build_part,
    empty_parameter_counts,
    parameter_counts,
    save_audioldm2,
    save_clip_vision,
    save_imagebind_checkpoint,
    with_lm_head,
)

REAL_PARAMETERS = {  # docs/real-profile.md
    "unet": 346.9e6, "language_model": 124.4e6, "vae": 55.4e6, "vocoder": 55.3e6, "text_encoder_2": 341.2e6,
    "text_encoder": 193.9e6, "clip_vision": 304e6,
}
IMAGEBIND_HUGE_PARAMETERS = 1200.8e6


@pytest.fixture(scope="module")
def tiny_audioldm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The tiny pipeline written with fp16 weights, and the seconds it took."""
    start = time.perf_counter()
    folder = save_audioldm2(tmp_path_factory.mktemp("rehearsal") / "audioldm2", "tiny", seed=0,
                            store_dtype=torch.float16)
    return folder, time.perf_counter() - start


def weight_files(folder: Path) -> dict[str, str]:
    """sha256 of every weight file under a folder, by relative path."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*.safetensors"))}


def test_tiny_pipeline_is_written_in_seconds_in_the_hub_layout_with_the_real_quirks(
    tiny_audioldm2: tuple[Path, float],
) -> None:
    folder, seconds = tiny_audioldm2
    assert seconds < 30
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["language_model"] == ["transformers", "GPT2Model"]
    assert model_index["unet"] == ["audioldm2", "AudioLDM2UNet2DConditionModel"]
    assert json.loads((folder / "text_encoder" / "config.json").read_text())["torch_dtype"] == "float64"
    for name in MODEL_PARTS:  # every config is the repo's copy of the real one, byte for byte
        repo_config = AUDIOLDM2_CONFIGS["tiny"] / name / "config.json"
        assert (folder / name / "config.json").read_bytes() == repo_config.read_bytes(), name
        assert len(list((folder / name).glob("*.safetensors"))) == 1, name
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    assert (folder / "feature_extractor" / "preprocessor_config.json").is_file()
    with safe_open(str(folder / "language_model" / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())  # a GPT2Model's keys: no "transformer." prefix, no lm_head
        dtypes = {handle.get_slice(key).get_dtype() for key in keys}
    assert "wte.weight" in keys and not any(key.startswith(("transformer.", "lm_head")) for key in keys)
    assert dtypes == {"F16"}
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            stored = {handle.get_slice(key).get_dtype() for key in handle.keys()}
        assert "F16" in stored and stored <= {"F16", "I64"}, (path, stored)


def test_diffusers_loads_it_as_the_real_one_loads(tiny_audioldm2: tuple[Path, float]) -> None:
    from diffusers import AudioLDM2Pipeline
    from transformers import GPT2Model

    folder, _ = tiny_audioldm2
    pipe = AudioLDM2Pipeline.from_pretrained(folder)
    assert type(pipe.language_model) is GPT2Model  # the declared class, not the GPT2LMHeadModel diffusers wants
    assert pipe.text_encoder.dtype == torch.float64  # CLAP's config says so
    for name in ("unet", "vae", "vocoder", "text_encoder_2", "projection_model", "language_model"):
        assert getattr(pipe, name).dtype == torch.float32, name
    assert pipe.tokenizer.model_max_length == 16 and pipe.tokenizer_2.model_max_length == 16
    assert pipe.tokenizer.pad_token_id == 1 and pipe.tokenizer_2.eos_token_id == 1
    for name in ("unet", "vae"):  # the stored weights are the built ones, rounded to fp16
        built = build_part(name, "tiny", seed=0).state_dict()
        loaded = getattr(pipe, name).state_dict()
        for key, value in built.items():
            assert torch.equal(loaded[key], value.half().float()), (name, key)


def test_gpt2_loads_as_an_lm_head_model_with_the_same_hidden_states(tiny_audioldm2: tuple[Path, float]) -> None:
    from transformers import GPT2LMHeadModel, GPT2Model

    folder, _ = tiny_audioldm2
    lm_head_model, info = GPT2LMHeadModel.from_pretrained(folder / "language_model", output_loading_info=True)
    assert {key for key in info["missing_keys"] if not key.startswith("lm_head")} == set()
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert lm_head_model.lm_head.weight.data_ptr() == lm_head_model.transformer.wte.weight.data_ptr()
    base = GPT2Model.from_pretrained(folder / "language_model")
    embeds = torch.randn(2, 5, base.config.n_embd, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(inputs_embeds=embeds).last_hidden_state
        assert torch.equal(lm_head_model(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1], expected)
        wrapped = with_lm_head(base)
        assert torch.equal(wrapped(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1], expected)
    assert wrapped.lm_head.weight is base.wte.weight


def test_the_same_seed_writes_the_same_weights(tiny_audioldm2: tuple[Path, float], tmp_path: Path) -> None:
    folder, _ = tiny_audioldm2
    again = save_audioldm2(tmp_path / "again", "tiny", seed=0, store_dtype=torch.float16)
    assert weight_files(again) == weight_files(folder)
    other = build_part("unet", "tiny", seed=1).state_dict()
    same = build_part("unet", "tiny", seed=0).state_dict()
    assert not all(torch.equal(other[key], same[key]) for key in same)


def test_parts_build_on_a_device_and_dtype_without_saving() -> None:
    components = build_audioldm2("tiny", seed=0, dtype=torch.bfloat16)
    assert set(components) >= set(MODEL_PARTS) | {"tokenizer", "tokenizer_2", "scheduler", "feature_extractor"}
    assert all(components[name].dtype == torch.bfloat16 for name in MODEL_PARTS)
    reference = build_part("vae", "tiny", seed=0).state_dict()
    assert all(torch.equal(value, reference[key].bfloat16()) for key, value in components["vae"].state_dict().items())
    counts = parameter_counts(components)
    expected = empty_parameter_counts("tiny")
    assert counts == {name: expected[name] for name in MODEL_PARTS}
    with pytest.raises(ValueError, match="unknown size"):
        build_part("unet", "huge")


def test_tiny_clip_loads_through_the_project_image_encoder(tmp_path: Path) -> None:
    folder = save_clip_vision(tmp_path / "clip", "tiny", seed=0, store_dtype=torch.float16)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "clip"  # the full CLIPConfig
    assert (folder / "preprocessor_config.json").read_bytes() == (
        CLIP_CONFIGS["tiny"] / "preprocessor_config.json").read_bytes()
    encoder = load_image_encoder(EncoderSpec(name="clip", source=str(folder)))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(2)]
    embeddings = encoder.embed_images(images)
    assert embeddings.shape == (2, 16) and torch.isfinite(embeddings).all()
    assert parameter_counts(folder) == {"clip": empty_parameter_counts("tiny")["clip_vision"]}


def test_real_sizes_built_on_meta_match_the_real_profile() -> None:
    counts = empty_parameter_counts("real")
    for name, expected in REAL_PARAMETERS.items():
        assert counts[name] == pytest.approx(expected, rel=0.005), name
    assert counts["projection_model"] < 2e6


@pytest.mark.slow
def test_tiny_imagebind_round_trips_and_huge_has_the_real_size(tmp_path: Path) -> None:
    if importlib.util.find_spec("imagebind") is None or importlib.util.find_spec("pytorchvideo") is None:
        pytest.skip("ImageBind not installed (pip install -c constraints.txt -e '.[imagebind]')")
    path = save_imagebind_checkpoint(tmp_path / "tiny.pth", "tiny", seed=0, store_dtype=torch.float16)
    assert path.with_suffix(".json").is_file()
    encoder = load_image_encoder(EncoderSpec(name="imagebind", source=str(path)))
    embeddings = encoder.embed_images([Image.new("RGB", (80, 60), (200, 30, 60)), Image.new("RGB", (60, 80))])
    assert embeddings.shape == (2, 32)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-4)
    huge = build_imagebind("real", device="meta")
    assert sum(parameter.numel() for parameter in huge.parameters()) == pytest.approx(IMAGEBIND_HUGE_PARAMETERS,
                                                                                      rel=0.005)
