"""ImageBind image encoder and audio embedder (`imagebind` kind, shared space "imagebind").

Meta's ImageBind through the `imagebind-unofficial` package (`pip install 'art2mus[imagebind]'`).
ImageBind's code and weights are licensed CC BY-NC-SA 4.0: non-commercial use only, share-alike.

Weights: a local `.pth` state dict (with an optional `<name>.json` beside it holding
`ImageBindModel` keyword arguments, for non-huge sizes; `save_imagebind` writes both) or, with an
empty source, the official imagebind_huge checkpoint (id `imagebind:imagebind_huge`), downloaded
once into torch hub's cache. Each role keeps only its own modality of the loaded model.

Preprocessing is exactly the package's own (imagebind/data.py): vision is bicubic 224, centre
crop, CLIP normalisation, and its output is unit-norm; audio is 3 clips of 2 s as 128-bin kaldi
fbank, and its output is unit-norm x 20 averaged over the three clips.
"""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from art2mus.config import EncoderSpec
from art2mus.errors import Art2MusError
from art2mus.io import atomic_path, write_json_atomic
from art2mus.models.encoders.base import offline_error, resample, resolve_device, resolve_local, rgb

IMAGEBIND_HUGE_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
IMAGEBIND_IMAGE_SIZE = 224
IMAGEBIND_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGEBIND_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGEBIND_AUDIO = {  # imagebind/data.py load_and_transform_audio_data defaults
    "sample_rate": 16000,
    "num_mel_bins": 128,
    "target_length": 204,
    "clip_duration": 2,
    "clips_per_video": 3,
    "mean": -4.268,
    "std": 9.138,
}


def import_imagebind() -> Any:
    """ImageBind's model module, with the shim it needs on current torchvision.

    pytorchvideo 0.1.5 imports `torchvision.transforms.functional_tensor`, which torchvision
    renamed to `_functional_tensor`; ImageBind imports `pkg_resources` (setuptools < 81).
    """
    if "torchvision.transforms.functional_tensor" not in sys.modules:
        try:
            import torchvision.transforms.functional_tensor  # noqa: F401
        except ImportError:
            from torchvision.transforms import _functional_tensor

            sys.modules["torchvision.transforms.functional_tensor"] = _functional_tensor
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from imagebind.models import imagebind_model
    except ImportError as error:
        hint = " (it needs pkg_resources: setuptools<81)" if error.name == "pkg_resources" else ""
        raise Art2MusError(
            f"ImageBind is not installed{hint}: pip install -c constraints.txt -e '.[imagebind]' ({error})"
        ) from None
    return imagebind_model


def imagebind_checkpoint(spec: EncoderSpec, role: str) -> tuple[Path, dict[str, Any] | None]:
    """The .pth to load and the model's keyword arguments (None: imagebind_huge)."""
    local = resolve_local(spec.source, "imagebind", role)
    if local is not None:
        if local.is_dir():
            candidates = sorted(local.glob("*.pth"))
            if len(candidates) != 1:
                raise Art2MusError(f"{local}: expected exactly one .pth ImageBind checkpoint, found {len(candidates)}")
            local = candidates[0]
        companion = local.with_suffix(".json")
        kwargs = json.loads(companion.read_text(encoding="utf-8")) if companion.is_file() else None
        return local, kwargs
    legacy = Path(".checkpoints") / Path(IMAGEBIND_HUGE_URL).name  # where imagebind_huge() itself saves it
    if legacy.is_file():
        return legacy.resolve(), None
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = hub_dir / Path(IMAGEBIND_HUGE_URL).name
    if not cached.is_file():
        try:
            hub_dir.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(IMAGEBIND_HUGE_URL, str(cached), progress=False)
        except Exception as error:  # URLError, HTTPError, OSError, timeouts: all mean "not here"
            raise offline_error("imagebind", IMAGEBIND_HUGE_URL, role, error) from None
    return cached, None


def load_imagebind_model(spec: EncoderSpec, role: str, device: str = "cpu") -> Any:
    """ImageBindModel with the checkpoint's weights, keeping only the modality `role` needs."""
    imagebind_model = import_imagebind()
    path, kwargs = imagebind_checkpoint(spec, role)
    model = imagebind_model.ImageBindModel(**kwargs) if kwargs else imagebind_model.imagebind_huge(pretrained=False)
    try:
        try:  # memory-mapped: the huge checkpoint is not held twice in memory
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) checkpoint cannot be mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        del state
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise Art2MusError(f"{path}: not a matching ImageBind checkpoint: {str(error).splitlines()[0]}") from None
    keep = "vision" if role == "image" else "audio"
    for modules in (model.modality_preprocessors, model.modality_trunks, model.modality_heads,
                    model.modality_postprocessors):
        for name in [name for name in modules if name != keep]:
            del modules[name]
    return model.to(resolve_device(device)).eval()


def save_imagebind(model: torch.nn.Module, model_kwargs: dict[str, Any] | None, path: str | Path) -> None:
    """Write an ImageBind state dict (and its constructor arguments beside it) for `load_*`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    if model_kwargs:
        write_json_atomic(model_kwargs, path.with_suffix(".json"))


def imagebind_dim(model: Any, modality: str) -> int:
    return int(model.modality_heads[modality][-1].out_features)


class ImageBindImageEncoder:
    """ImageBind's vision branch with its own preprocessing (bicubic 224, centre crop, CLIP norm)."""

    shared_space: str | None = "imagebind"

    def __init__(self, model: Any, encoder_id: str, device: str = "cpu") -> None:
        from torchvision import transforms

        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.encoder_id = encoder_id
        self.dim = imagebind_dim(model, "vision")
        self.transform = transforms.Compose([
            transforms.Resize(IMAGEBIND_IMAGE_SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(IMAGEBIND_IMAGE_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGEBIND_MEAN, std=IMAGEBIND_STD),
        ])

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.empty(0, self.dim)
        pixels = torch.stack([self.transform(image) for image in rgb(images)]).to(self.device)
        return self.model({"vision": pixels})["vision"].float().cpu()


class ImageBindAudioEmbedder:
    """ImageBind's audio branch: 3 clips of 2 s, 128-bin kaldi fbank, exactly as imagebind/data.py."""

    shared_space: str | None = "imagebind"
    sample_rate: int = int(IMAGEBIND_AUDIO["sample_rate"])

    def __init__(self, model: Any, encoder_id: str, device: str = "cpu") -> None:
        import_imagebind()  # its data helpers below need the shim
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.encoder_id = encoder_id
        self.dim = imagebind_dim(model, "audio")

    def clips(self, wave: np.ndarray) -> torch.Tensor:
        """[clips, 1, mel bins, frames] for one 16 kHz waveform (imagebind.data's audio loop)."""
        from imagebind.data import get_clip_timepoints, waveform2melspec
        from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

        settings = IMAGEBIND_AUDIO
        rate = settings["sample_rate"]
        waveform = torch.from_numpy(np.array(wave, dtype=np.float32)).unsqueeze(0)
        sampler = ConstantClipsPerVideoSampler(
            clip_duration=settings["clip_duration"], clips_per_video=settings["clips_per_video"]
        )
        melspecs = []
        for start, end in get_clip_timepoints(sampler, waveform.size(1) / rate):
            clip = waveform[:, int(start * rate): int(end * rate)]
            melspec = waveform2melspec(clip, rate, settings["num_mel_bins"], settings["target_length"])
            melspecs.append((melspec - settings["mean"]) / settings["std"])
        return torch.stack(melspecs)

    @torch.inference_mode()
    def embed_audio(self, waveforms: list[np.ndarray], sample_rate: int) -> torch.Tensor:
        if not waveforms:
            return torch.empty(0, self.dim)
        batch = torch.stack([self.clips(resample(wave, sample_rate, self.sample_rate)) for wave in waveforms])
        return self.model({"audio": batch.to(self.device)})["audio"].float().cpu()
