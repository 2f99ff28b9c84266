"""One loader for both profiles: what the `prior` stage wrote (tiny weights, or a reference to AudioLDM2).

What a load verifies: the tiny backbone's identity is the hash of the files it was read from; a reference to a
local AudioLDM2 folder must still hash to the `local@<hash>` the prior stage recorded; AudioLDM2 from the
Hugging Face cache has each file checked against the content hash it is stored under (`audioldm2.verify_snapshot`).
Files are hashed once while unchanged (`art2mus.io.verified_sha256_file`), so the gigabytes are read once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from art2mus.config import BackboneParams
from art2mus.io import UnreadableFile, read_json, read_safetensors, verified_sha256_tree, write_json_atomic
from art2mus.models import audioldm2, tiny
from art2mus.models.backbone import BACKBONE_FILE, Backbone, BackboneError


def source_identity(source: str, revision: str) -> str:
    """What names the weights exactly: `<hub id>@<revision>`, or `local@<hash>` of a folder (hashed once,
    streamed, by the `prior` stage, and recorded in the reference)."""
    if audioldm2.is_local_source(source):
        folder = Path(source).expanduser()
        if not (folder / "model_index.json").is_file():
            raise BackboneError(f"AudioLDM2 source {source!r}: no model_index.json there; {audioldm2.SOURCE_HINT}")
        return f"local@{verified_sha256_tree(folder)}"
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
    file = path / audioldm2.STREAMS_FILE
    if not file.is_file():
        return None
    try:
        return read_safetensors(file, "re-run the prior stage (art2mus repro prior --force)")
    except UnreadableFile as error:
        raise BackboneError(str(error)) from None


def verify_local_source(reference: Path, source: str, recorded: str | None) -> str:
    """The identity of a local AudioLDM2 folder as it is now; BackboneError when it is not the one the prior
    stage recorded in `reference` (a file of it changed since)."""
    loaded = source_identity(source, "")
    if recorded and recorded.startswith("local@") and recorded != loaded:
        raise BackboneError(
            f"{Path(source).expanduser()}: the AudioLDM2 folder hashes to {loaded.removeprefix('local@')}, but "
            f"{reference} records {recorded.removeprefix('local@')}: its files changed after the prior stage "
            "ran; restore them, or re-run `dvc repro prior` if the change is meant")
    return loaded


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """The backbone the `prior` stage wrote at `path`, on `device` (`auto`: the GPU when there is one), its
    files verified as the module docstring says; `info["identity"]` names what was loaded."""
    path = Path(path)
    if not (path / BACKBONE_FILE).is_file():
        raise BackboneError(f"no backbone at {path} (run the `prior` stage first)")
    info = read_json(path / BACKBONE_FILE)
    if info.get("profile") == tiny.PROFILE:
        return tiny.load_tiny_backbone(path, device)
    if info.get("profile") != audioldm2.PROFILE:
        raise BackboneError(f"{path / BACKBONE_FILE}: unknown backbone profile {info.get('profile')!r}")
    identity = info.get("identity")
    if audioldm2.is_local_source(info["source"]):
        audioldm2.check_local_parts(info["source"])  # a truncated file is named before the hash differs
        identity = verify_local_source(path / BACKBONE_FILE, info["source"], identity)
    return audioldm2.load_audioldm2_backbone(
        info["source"], info["revision"], int(info["max_new_tokens"]), info.get("null_conditioning", "zeros"),
        device=device, identity=identity, streams=read_streams(path))
