"""One loader for both profiles: what the `prior` stage wrote (tiny weights, or a reference to AudioLDM2)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from art2mus.config import BackboneParams
from art2mus.io import sha256_tree, write_json_atomic
from art2mus.models import audioldm2, tiny
from art2mus.models.backbone import BACKBONE_FILE, Backbone, BackboneError


def source_identity(source: str, revision: str) -> str:
    """What names the weights exactly: `<hub id>@<revision>`, or `local@<hash>` of a folder (hashed once,
    streamed, by the `prior` stage, and recorded in the reference)."""
    if audioldm2.is_local_source(source):
        folder = Path(source).expanduser()
        if not (folder / "model_index.json").is_file():
            raise BackboneError(f"AudioLDM2 source {source!r}: no model_index.json there; {audioldm2.SOURCE_HINT}")
        return f"local@{sha256_tree(folder)}"
    return f"{source}@{revision}"


def write_backbone_reference(params: BackboneParams, path: str | Path) -> None:
    """The real profile's `prior` output: which AudioLDM2 to load and how (no weights are copied), and the
    empty prompt's conditioning streams, computed here once so later loads need no text encoders."""
    from safetensors.torch import save_file

    path = Path(path)
    info = {"profile": params.profile, "source": params.source, "revision": params.revision,
            "max_new_tokens": params.max_new_tokens, "null_conditioning": params.null_conditioning,
            "identity": source_identity(params.source, params.revision)}
    streams = audioldm2.empty_prompt_streams(params.source, params.revision, params.max_new_tokens, params.device)
    path.mkdir(parents=True, exist_ok=True)
    save_file(streams, path / audioldm2.STREAMS_FILE)
    write_json_atomic(info, path / BACKBONE_FILE)


def read_streams(path: Path) -> dict[str, torch.Tensor] | None:
    """The empty prompt's streams saved beside a reference (None: an older reference; they are recomputed)."""
    from safetensors.torch import load_file

    file = path / audioldm2.STREAMS_FILE
    if not file.is_file():
        return None
    try:
        return load_file(file)
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for a damaged file
        raise BackboneError(f"{file}: unreadable ({error}); re-run the prior stage (art2mus repro prior --force)") \
            from None


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """The backbone the `prior` stage wrote at `path`, on `device` (`auto`: the GPU when there is one)."""
    path = Path(path)
    if not (path / BACKBONE_FILE).is_file():
        raise BackboneError(f"no backbone at {path} (run the `prior` stage first)")
    info = json.loads((path / BACKBONE_FILE).read_text())
    if info.get("profile") == tiny.PROFILE:
        return tiny.load_tiny_backbone(path, device)
    if info.get("profile") != audioldm2.PROFILE:
        raise BackboneError(f"{path / BACKBONE_FILE}: unknown backbone profile {info.get('profile')!r}")
    return audioldm2.load_audioldm2_backbone(
        info["source"], info["revision"], int(info["max_new_tokens"]), info.get("null_conditioning", "zeros"),
        device=device, identity=info.get("identity"), streams=read_streams(path))
