"""Seeded random-weight checkpoints of the real stack, at real or tiny size, in the hub layouts with their quirks.

Every part is built from the JSON configs kept in `art2mus/rehearsal/configs/` (real: the public
`cvssp/audioldm2-music`, `openai/clip-vit-large-patch14` and ImageBind-huge configs; tiny: the same
layouts at toy sizes), with seeded random weights, and written the way the hub has it, so the real
loading code runs unchanged: `AudioLDM2Pipeline.from_pretrained`, `CLIPVisionModelWithProjection.
from_pretrained` and ImageBind's `.pth` state dict.

This module imports only the standard library, torch, transformers, diffusers and safetensors (ImageBind
lazily), because it also runs on a bare GPU machine without the rest of art2mus.

Quirks the written checkpoints keep, because the real ones have them:
- `model_index.json` declares `language_model` a `GPT2Model` (diffusers' `generate_language_model` needs a
  `GPT2LMHeadModel`); its weights are a `GPT2Model`'s (no `transformer.` prefix, no `lm_head`).
- `unet` and `projection_model` are declared under the library `"audioldm2"`.
- `text_encoder/config.json` (CLAP) says `"torch_dtype": "float64"`.
- Every config file is the repo's copy of the real one (transformers 4.32 / diffusers 0.20 keys), not what
  today's libraries would write, whatever dtype the weights are stored in.
- CLIP's `config.json` is the full `CLIPConfig` (text and vision, with the old `*_config_dict` keys) and
  its `preprocessor_config.json` the old `CLIPFeatureExtractor` one; only the vision tower's weights are
  stored (`vision_model.*`, `visual_projection.weight`, as in the real file).
- The real ImageBind checkpoint is a bare state dict with no `<name>.json` beside it (the loader then builds
  `imagebind_huge`); a tiny one has its `ImageBindModel` keyword arguments in `<name>.json`.

The tokenizers are stand-ins built in code (no download): a byte-level RoBERTa with one token per byte and a
character-level T5, each with the real special tokens and `model_max_length`.

Seeding: each part draws from its own seed (derived from `seed` and the part's name), on the CPU, so a part
is the same whether it is built alone or with the others, and on whatever device it is moved to.
"""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    PretrainedConfig,
    PreTrainedModel,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)
from transformers.utils import logging as transformers_logging

CONFIGS = Path(__file__).resolve().parent / "configs"
SIZES = ("real", "tiny")
AUDIOLDM2_CONFIGS = {"real": CONFIGS / "audioldm2-music", "tiny": CONFIGS / "audioldm2-tiny"}
CLIP_CONFIGS = {"real": CONFIGS / "clip-vit-large-patch14", "tiny": CONFIGS / "clip-tiny"}
IMAGEBIND_CONFIGS = {"real": CONFIGS / "imagebind-huge.json", "tiny": CONFIGS / "imagebind-tiny.json"}

MODEL_PARTS = ("unet", "language_model", "vae", "vocoder", "text_encoder", "text_encoder_2", "projection_model")
OTHER_PARTS = ("tokenizer", "tokenizer_2", "feature_extractor", "scheduler")
PART_CONFIG_FILES = {"scheduler": "scheduler_config.json", "feature_extractor": "preprocessor_config.json"}
DIFFUSERS_PARTS: dict[str, type[ConfigMixin]] = {"unet": AudioLDM2UNet2DConditionModel, "vae": AutoencoderKL,
                   "projection_model": AudioLDM2ProjectionModel}
TRANSFORMERS_PARTS: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "language_model": (GPT2Config, GPT2Model),
    "vocoder": (SpeechT5HifiGanConfig, SpeechT5HifiGan),
    "text_encoder": (ClapConfig, ClapModel),
    "text_encoder_2": (T5Config, T5EncoderModel),
}
T5_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,'\"()-:;!?&/"

Built = TypeVar("Built", bound=torch.nn.Module)


# ---- small helpers ------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file."""
    return json.loads(path.read_text(encoding="utf-8"))


def check_size(size: str) -> None:
    """Refuse a size other than "real" or "tiny"."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")


def part_seed(seed: int, name: str) -> int:
    """The seed one part draws from: fixed by the build's seed and the part's name."""
    return zlib.crc32(f"{seed}/{name}".encode())


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered meanwhile moves to "meta" at once (buffers stay): shapes without weights.

    Unlike `with torch.device("meta")`, code that reads plain tensors while building (ImageBind's
    `torch.linspace(...).item()`) still works.
    """
    register = torch.nn.Module.register_parameter

    def register_on_meta(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    torch.nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]  # patched for the block
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]  # restored


def seeded_build(build: Callable[[], Built], seed: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> Built:
    """`build()` with seeded random weights, made on the CPU and moved; on "meta", shapes only (no weights)."""
    if torch.device(device).type == "meta":
        with parameters_on_meta():
            return build()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        module = build()
    module = module.to(device)
    if dtype is not None:
        module = module.to(dtype)
    return module.eval()


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers' and diffusers' warnings silenced (the real vocoder config's model_type, fp16 casts)."""
    levels = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # "Writing model shards" / "Loading weights" bars
    diffusers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers_logging.set_verbosity(levels[0])
        diffusers_logging.set_verbosity(levels[1])
        transformers_logging.enable_progress_bar()
        diffusers_logging.enable_progress_bar()


def save_module(module: ModelMixin | PreTrainedModel, folder: Path, store_dtype: torch.dtype) -> None:
    """`save_pretrained` with the floating-point weights cast to `store_dtype`."""
    with quiet_libraries():
        module.to(store_dtype)  # type: ignore[arg-type]  # the libraries' wrapped `to` stubs lose the bound self
        module.save_pretrained(folder)


# ---- AudioLDM2 ----------------------------------------------------------------------------------
def byte_characters() -> list[str]:
    """The 256 characters byte-level BPE (GPT-2, RoBERTa) writes bytes as: printable ones as is, the rest shifted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [byte for byte in range(256) if byte not in printable]
    return [chr(code) for code in printable] + [chr(256 + index) for index in range(len(shifted))]


def byte_level_roberta(model_max_length: int, add_prefix_space: bool = False) -> RobertaTokenizer:
    """A byte-level RoBERTa tokenizer built in code: one token per byte (no merges), RoBERTa's special tokens."""
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *sorted(byte_characters()), "<mask>"]
    return RobertaTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=[],
                            model_max_length=model_max_length, add_prefix_space=add_prefix_space)


def character_t5(model_max_length: int, extra_ids: int = 0) -> T5Tokenizer:
    """A T5 tokenizer built in code: a unigram over single characters, T5's special tokens."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(character, -3.0) for character in T5_CHARACTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=extra_ids, model_max_length=model_max_length)


def roberta_stand_in(folder: Path) -> RobertaTokenizer:
    """CLAP's tokenizer stand-in: byte-level RoBERTa, one token per byte, the real special tokens and length."""
    settings = read_json(folder / "tokenizer_config.json")
    return byte_level_roberta(settings["model_max_length"], settings["add_prefix_space"])


def t5_stand_in(folder: Path) -> T5Tokenizer:
    """Flan-T5's tokenizer stand-in: a character unigram with the real special tokens, extra ids and length."""
    settings = read_json(folder / "tokenizer_config.json")
    return character_t5(settings["model_max_length"], settings["extra_ids"])


def model_part(name: str, folder: Path) -> torch.nn.Module:
    """One AudioLDM2 model part from its config folder, drawing from the current random state."""
    if name in DIFFUSERS_PARTS:
        diffusers_class = DIFFUSERS_PARTS[name]
        # diffusers types both as maybe-tuples; without return_unused_kwargs they are a dict and a model
        diffusers_config = cast(dict[str, Any], diffusers_class.load_config(folder))
        return cast(torch.nn.Module, diffusers_class.from_config(diffusers_config))
    config_class, model_class = TRANSFORMERS_PARTS[name]
    with quiet_libraries():  # the real vocoder config says model_type "hifigan" (transformers 4.32)
        config = config_class.from_pretrained(folder)
    return model_class(config)


def build_part(name: str, size: str = "real", seed: int = 0, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> Any:
    """One AudioLDM2 part (model, tokenizer, feature extractor or scheduler) from the repo's configs.

    Models get seeded random weights on `device` in `dtype` (default float32), or no weights on "meta".
    """
    check_size(size)
    folder = AUDIOLDM2_CONFIGS[size] / name
    if name == "tokenizer":
        return roberta_stand_in(folder)
    if name == "tokenizer_2":
        return t5_stand_in(folder)
    if name == "feature_extractor":
        return ClapFeatureExtractor.from_pretrained(folder)
    if name == "scheduler":
        return DDIMScheduler.from_pretrained(folder)
    if name not in MODEL_PARTS:
        raise ValueError(f"unknown AudioLDM2 part {name!r}; choose one of: {', '.join(MODEL_PARTS + OTHER_PARTS)}")
    return seeded_build(lambda: model_part(name, folder), part_seed(seed, name), device, dtype)


def build_audioldm2(size: str = "real", seed: int = 0, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Every AudioLDM2Pipeline component, as `AudioLDM2Pipeline(**components)` takes them (the LM a GPT2Model)."""
    return {name: build_part(name, size, seed, device, dtype) for name in MODEL_PARTS + OTHER_PARTS}


def with_lm_head(language_model: GPT2Model) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel around `language_model`'s own weights (lm_head tied to its embeddings, as GPT-2's is)."""
    with torch.device("meta"):
        model = GPT2LMHeadModel(language_model.config)
    model.transformer = language_model
    model.lm_head.weight = language_model.wte.weight
    return model.eval()


def save_audioldm2(folder: str | Path, size: str = "real", seed: int = 0,
                   store_dtype: torch.dtype = torch.float32) -> Path:
    """Write a seeded random-weight AudioLDM2 pipeline folder in the hub layout, one part at a time.

    Weights are stored in `store_dtype` (float16 halves the disk); every config file is the repo's copy of
    the real one, so loading gives the real classes and dtypes (CLAP's float64 included).
    """
    check_size(size)
    folder = Path(folder)
    source = AUDIOLDM2_CONFIGS[size]
    folder.mkdir(parents=True, exist_ok=True)
    for name in MODEL_PARTS:
        part = build_part(name, size, seed)
        save_module(part, folder / name, store_dtype)
        del part
        gc.collect()  # one big part in memory at a time
        shutil.copyfile(source / name / "config.json", folder / name / "config.json")
    for name in ("tokenizer", "tokenizer_2"):
        build_part(name, size, seed).save_pretrained(folder / name)
    for name, config_file in PART_CONFIG_FILES.items():
        (folder / name).mkdir(exist_ok=True)
        shutil.copyfile(source / name / config_file, folder / name / config_file)
    shutil.copyfile(source / "model_index.json", folder / "model_index.json")
    return folder


# ---- CLIP ViT-L/14 vision tower -----------------------------------------------------------------
def build_clip_vision(size: str = "real", seed: int = 0, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None) -> CLIPVisionModelWithProjection:
    """CLIP's vision tower with its projection, from the vision half of the repo's CLIPConfig."""
    check_size(size)
    config = CLIPVisionConfig.from_pretrained(CLIP_CONFIGS[size])
    return seeded_build(lambda: CLIPVisionModelWithProjection(config), part_seed(seed, "clip_vision"), device, dtype)


def save_clip_vision(folder: str | Path, size: str = "real", seed: int = 0,
                     store_dtype: torch.dtype = torch.float32) -> Path:
    """Write a seeded random-weight CLIP vision tower and its image processor config, as the hub has them.

    The config's vision half names no dtype, so transformers 5 loads the weights in the dtype they are
    stored in: float32 (the default) behaves as the real checkpoint does, float16 loads in float16.
    """
    folder = Path(folder)
    model = build_clip_vision(size, seed)
    save_module(model, folder, store_dtype)
    del model
    gc.collect()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(CLIP_CONFIGS[size] / name, folder / name)
    return folder


# ---- ImageBind ----------------------------------------------------------------------------------
def import_imagebind() -> Any:
    """ImageBind's model module, with pytorchvideo's import of torchvision's renamed `functional_tensor` shimmed."""
    if "torchvision.transforms.functional_tensor" not in sys.modules:
        try:
            import torchvision.transforms.functional_tensor  # noqa: F401
        except ImportError:
            from torchvision.transforms import _functional_tensor

            sys.modules["torchvision.transforms.functional_tensor"] = _functional_tensor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from imagebind.models import imagebind_model
    return imagebind_model


def imagebind_kwargs(size: str = "real") -> dict[str, Any]:
    """`ImageBindModel` keyword arguments: imagebind_huge's for "real", toy ones for "tiny"."""
    check_size(size)
    return read_json(IMAGEBIND_CONFIGS[size])


def build_imagebind(size: str = "real", seed: int = 0, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> torch.nn.Module:
    """ImageBind (all six modalities) with seeded random weights; "real" is `imagebind_huge(pretrained=False)`."""
    imagebind_model = import_imagebind()
    kwargs = imagebind_kwargs(size)
    return seeded_build(lambda: imagebind_model.ImageBindModel(**kwargs), part_seed(seed, "imagebind"), device, dtype)


def save_imagebind_checkpoint(path: str | Path, size: str = "real", seed: int = 0,
                              store_dtype: torch.dtype = torch.float32) -> Path:
    """Write a seeded random-weight ImageBind state dict as a `.pth` (tiny: its kwargs in `<name>.json` beside).

    The real checkpoint has no `.json` beside it: the loader then builds imagebind_huge.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_imagebind(size, seed)
    state = {key: value.to(store_dtype) if value.is_floating_point() else value
             for key, value in model.state_dict().items()}
    del model
    gc.collect()
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)
    del state
    gc.collect()
    companion = path.with_suffix(".json")
    if size == "real":
        companion.unlink(missing_ok=True)
    else:
        companion.write_text(json.dumps(imagebind_kwargs(size), indent=2) + "\n", encoding="utf-8")
    return path


# ---- sizes --------------------------------------------------------------------------------------
def stored_elements(files: list[Path]) -> int:
    """Elements of every tensor stored in these safetensors or .pth files, read without loading the data."""
    total = 0
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    total += torch.Size(handle.get_slice(key).get_shape()).numel()
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            total += sum(tensor.numel() for tensor in state.values())
    return total


def parameter_counts(source: str | Path | Mapping[str, Any]) -> dict[str, int]:
    """Parameters per part of built components, or elements stored per part of a written checkpoint.

    A folder with parts in subfolders (a pipeline) counts each subfolder; a folder with weights of its own
    (CLIP) or a `.pth` file (ImageBind) counts as one part named after it. Stored counts include persistent
    buffers (e.g. the vocoder's mean and scale).
    """
    if isinstance(source, Mapping):
        return {name: sum(parameter.numel() for parameter in part.parameters())
                for name, part in source.items() if isinstance(part, torch.nn.Module)}
    path = Path(source)
    if path.is_file():
        return {path.stem: stored_elements([path])}
    counts = {}
    own = sorted(path.glob("*.safetensors"))
    if own:
        counts[path.name] = stored_elements(own)
    for part in sorted(item for item in path.iterdir() if item.is_dir()):
        files = sorted(part.glob("*.safetensors"))
        if files:
            counts[part.name] = stored_elements(files)
    return counts


def empty_parameter_counts(size: str = "real") -> dict[str, int]:
    """Parameters per AudioLDM2 model part and of the CLIP vision tower, built on "meta" (no weights, instant)."""
    parts = {name: build_part(name, size, device="meta") for name in MODEL_PARTS}
    parts["clip_vision"] = build_clip_vision(size, device="meta")
    return parameter_counts(parts)
