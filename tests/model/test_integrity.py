"""Integrity on load: a packaged model whose files changed after training is refused, naming the file and both
hashes; an intact one reports the hashes of what it loaded; weights are hashed once while unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

import art2mus.io
from art2mus.errors import Art2MusError
from art2mus.io import sha256_file, sha256_tree
from art2mus.models.aligner import ImageAligner, state_dict_sha256
from art2mus.models.backbone import BackboneError
from art2mus.models.encoders import build_tiny_image_encoder
from art2mus.models.pipeline import Art2MusPipeline
from art2mus.workspace import MODEL_FILE
from tests.tiny_model import build_tiny_model

ALIGNER_WEIGHTS = "aligner/diffusion_pytorch_model.safetensors"
PRIOR_WEIGHTS = "prior/unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny packaged model whose model.json records its parts as the train stage does (hashes computed here
    from the saved files, not by the loader under test)."""
    folder = build_tiny_model(tmp_path_factory.mktemp("model"))
    record = {"weights_sha256": state_dict_sha256(ImageAligner.from_pretrained(folder / "aligner")),
              "prior": f"tiny@{sha256_tree(folder / 'prior')}",
              "image_encoder_id": build_tiny_image_encoder().encoder_id}
    info = json.loads((folder / MODEL_FILE).read_text())
    (folder / MODEL_FILE).write_text(json.dumps({**info, **record}, indent=2))
    return folder, record


@pytest.fixture
def model(trained: tuple[Path, dict], tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained[0], tmp_path / "art2mus"))


def flip_last_byte(file: Path) -> None:
    """Change one byte of the last tensor's data: the file stays valid safetensors with the same header."""
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))
    with safe_open(str(file), framework="pt") as handle:  # still readable: only a hash can tell
        for name in handle.keys():
            handle.get_tensor(name)


def test_an_intact_model_reports_the_hashes_it_loaded(model: Path, trained: tuple[Path, dict]) -> None:
    pipeline = Art2MusPipeline.from_pretrained(model, device="cpu")
    assert pipeline.info["weights_sha256"] == state_dict_sha256(pipeline.aligner) == trained[1]["weights_sha256"]
    assert pipeline.info["prior"] == pipeline.backbone.info["identity"] == trained[1]["prior"]
    assert sorted(pipeline.info["verified_on_load"]) == ["image_encoder_id", "prior", "weights_sha256"]


def test_a_bit_flipped_aligner_is_refused_naming_the_file_and_both_hashes(model: Path,
                                                                          trained: tuple[Path, dict]) -> None:
    flip_last_byte(model / ALIGNER_WEIGHTS)
    flipped = state_dict_sha256(ImageAligner.from_pretrained(model / "aligner"))
    assert flipped != trained[1]["weights_sha256"]
    with pytest.raises(Art2MusError) as refused:
        Art2MusPipeline.from_pretrained(model, device="cpu")
    message = str(refused.value)
    assert str(model / ALIGNER_WEIGHTS) in message
    assert trained[1]["weights_sha256"] in message and flipped in message


def test_a_changed_prior_is_refused_naming_it_and_both_hashes(model: Path, trained: tuple[Path, dict]) -> None:
    flip_last_byte(model / PRIOR_WEIGHTS)
    with pytest.raises(Art2MusError) as refused:
        Art2MusPipeline.from_pretrained(model, device="cpu")
    message = str(refused.value)
    assert str(model / "prior") in message and trained[1]["prior"] in message
    assert f"tiny@{sha256_tree(model / 'prior')}" in message


def test_another_image_encoder_than_recorded_is_refused(model: Path) -> None:
    info = json.loads((model / MODEL_FILE).read_text())
    (model / MODEL_FILE).write_text(json.dumps({**info, "image_encoder_id": "tiny:0000000000000000"}))
    with pytest.raises(Art2MusError, match=r"image encoder tiny.*tiny:[0-9a-f]+.*tiny:0000000000000000"):
        Art2MusPipeline.from_pretrained(model, device="cpu")


def test_without_a_record_the_loaded_hashes_are_reported(model: Path) -> None:
    info = json.loads((model / MODEL_FILE).read_text())
    for key in ("weights_sha256", "prior", "image_encoder_id"):
        info.pop(key)
    (model / MODEL_FILE).write_text(json.dumps(info))
    flip_last_byte(model / ALIGNER_WEIGHTS)  # nothing recorded to compare with: it loads, and says what it loaded
    pipeline = Art2MusPipeline.from_pretrained(model, device="cpu")
    assert pipeline.info["weights_sha256"] == state_dict_sha256(pipeline.aligner)
    assert pipeline.info["verified_on_load"] == []


@pytest.mark.parametrize("part", [ALIGNER_WEIGHTS, PRIOR_WEIGHTS, "aligner/config.json", "prior/backbone.json",
                                  MODEL_FILE])
def test_a_truncated_model_file_is_named(model: Path, part: str) -> None:
    data = (model / part).read_bytes()
    (model / part).write_bytes(data[: len(data) // 2])
    with pytest.raises(Art2MusError, match=rf"{model / part}: .*truncated or corrupt"):
        Art2MusPipeline.from_pretrained(model, device="cpu")


def counting_file_hash(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file `art2mus.io.sha256_file` streams, in order."""
    hashed: list[Path] = []

    def counted(path):
        hashed.append(Path(path))
        return sha256_file(path)

    monkeypatch.setattr(art2mus.io, "sha256_file", counted)
    return hashed


def test_the_prior_is_hashed_once_per_process_while_its_files_are_unchanged(
        model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = counting_file_hash(monkeypatch)
    Art2MusPipeline.from_pretrained(model, device="cpu")
    prior_files = [item for item in (model / "prior").rglob("*") if item.is_file()]
    assert sorted(hashed) == sorted(prior_files)
    hashed.clear()
    Art2MusPipeline.from_pretrained(model, device="cpu")
    assert hashed == []  # the second load only stats the files
    config = model / "prior" / "unet" / "config.json"
    config.write_bytes(config.read_bytes())  # rewritten with the same bytes: hashed again, the others not
    Art2MusPipeline.from_pretrained(model, device="cpu")
    assert hashed == [config]


def test_large_files_hashes_persist_between_processes_and_a_rewrite_is_hashed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from art2mus.io import verified_sha256_file

    monkeypatch.setenv("ART2MUS_HASH_CACHE", str(tmp_path / "cache" / "sha256.json"))
    monkeypatch.setattr(art2mus.io, "PERSIST_MIN_BYTES", 1)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(4096))
    hashed = counting_file_hash(monkeypatch)
    assert verified_sha256_file(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    monkeypatch.setattr(art2mus.io, "_verified_hashes", {})  # a new process: only the JSON is left
    verified_sha256_file(weights)
    assert len(hashed) == 1 and (tmp_path / "cache" / "sha256.json").is_file()
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: the ctime still moved
    monkeypatch.setattr(art2mus.io, "_verified_hashes", {})
    assert verified_sha256_file(weights) == hashlib.sha256(bytes(data)).hexdigest() and len(hashed) == 2


def test_a_changed_local_audioldm2_folder_is_refused(tmp_path: Path) -> None:
    from art2mus.models.loader import verify_local_source

    folder = tmp_path / "audioldm2-music"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "weights.safetensors").write_bytes(b"weights")
    recorded = f"local@{sha256_tree(folder)}"
    reference = tmp_path / "prior" / "backbone.json"
    assert verify_local_source(reference, str(folder), recorded) == recorded
    (folder / "unet" / "weights.safetensors").write_bytes(b"wEights")
    with pytest.raises(BackboneError) as refused:
        verify_local_source(reference, str(folder), recorded)
    assert str(folder) in str(refused.value) and recorded.removeprefix("local@") in str(refused.value)
    assert sha256_tree(folder) in str(refused.value) and str(reference) in str(refused.value)


def test_hub_cache_files_are_checked_against_the_hash_they_are_stored_under(tmp_path: Path) -> None:
    """The Hugging Face cache layout: snapshots/<commit>/<file> links to blobs/<sha256 of an LFS file, or git's
    blob id of a small one>."""
    from art2mus.models.audioldm2 import verify_snapshot

    snapshot, blobs, shared = tmp_path / "snapshots" / "0019cb0b", tmp_path / "blobs", tmp_path / "shared"
    blobs.mkdir(parents=True)
    shared.mkdir()
    contents = {"unet/diffusion_pytorch_model.safetensors": os.urandom(2048), "unet/config.json": b'{"a": 1}'}
    for name, data in contents.items():
        lfs = name.endswith(".safetensors")
        blob = blobs / (hashlib.sha256(data).hexdigest() if lfs
                        else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        if lfs:  # newer caches link the blob on to a shared store, under another (Xet) hash
            (shared / ("5" * 64)).write_bytes(data)
            blob.symlink_to(shared / ("5" * 64))
        else:
            blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    assert verify_snapshot(snapshot, ("unet",)) == 2
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    stored = hashlib.sha256(contents["unet/diffusion_pytorch_model.safetensors"]).hexdigest()
    changed = bytearray(weights.read_bytes())
    changed[100] ^= 0x01
    weights.resolve().write_bytes(bytes(changed))
    with pytest.raises(BackboneError) as refused:
        verify_snapshot(snapshot, ("unet",))
    assert str(weights) in str(refused.value) and stored in str(refused.value)
    assert hashlib.sha256(bytes(changed)).hexdigest() in str(refused.value)
