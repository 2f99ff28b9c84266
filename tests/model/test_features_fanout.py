"""The Dask fan-out of the features stage (flows/features.py) fills the very cache the stage fills alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from art2mus.config import load_params
from art2mus.data.ingest import ingest
from art2mus.errors import Art2MusError
from art2mus.features import compute_features
from art2mus.features.cache import EmbeddingCache
from art2mus.features.embeddings import (
    EMBEDDING_FILES,
    SHARDS_DIR,
    manifest_items,
    shaping_params,
)
from art2mus.io import read_table
from art2mus.models.encoders import EncoderRef
from flows.features import features_fanout, pending_contents, split_into_shards
from tests.corpus import make_raw_dataset
from tests.helpers import ROOT, project_env

N_ITEMS = 10
PARAMS = {
    "audio": {"crop_offset_seconds": 0.25, "crop_seconds": 1.0},  # the corpus' tracks are 1.5 s long
    "ingest": {"artgraph_dir": "raw/artgraph", "fma_dir": "raw/fma", "out_dir": "interim"},
    "features": {"out_dir": "features", "batch_size": 2, "shard_size": 3},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: params.yaml, a raw corpus (one image content twice) and its manifests."""
    root = tmp_path_factory.mktemp("fanout")
    artgraph, fma = make_raw_dataset(root / "raw", N_ITEMS, N_ITEMS)
    first = artgraph / "imagesf2" / "painter-0_work-0.jpg"
    (artgraph / "imagesf2" / "painter-0_copy.jpg").write_bytes(first.read_bytes())
    listing = pd.read_csv(artgraph / "artgraph.csv")
    copy = listing.iloc[[0]].assign(name="painter-0_copy.jpg", title="Copy")
    pd.concat([listing, copy]).to_csv(artgraph / "artgraph.csv", index=False)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    params = load_params(root / "params.yaml")
    ingest(artgraph, fma, root / "interim", params.ingest.model_copy(update={
        "artgraph_dir": str(artgraph), "fma_dir": str(fma), "out_dir": str(root / "interim")}), quiet=True)
    return root


def run_fanout(root: Path, *options: str) -> list[dict]:
    """`python -m flows.features` in `root` (a LocalCluster of 2 worker processes); its summary lines."""
    env = {**project_env(root), "PYTHONPATH": str(ROOT), "ART2MUS_DEVICE": "cpu"}
    result = subprocess.run([sys.executable, "-m", "flows.features", "--workers", "2", *options], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"flows.features failed:\n{result.stdout}\n{result.stderr}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def caches(out_dir: Path, root: Path) -> dict[str, EmbeddingCache]:
    params = load_params(root / "params.yaml")
    specs = {"image": params.features.image_encoder, "audio": params.features.audio_embedder}
    result = {}
    for modality, spec in specs.items():
        ref = EncoderRef(spec, modality)
        result[modality] = EmbeddingCache(out_dir / SHARDS_DIR, modality, ref.encoder_id, ref.shared_space,
                                          shaping_params(modality, params.audio))
    return result


def run_stage_library(root: Path, out_dir: Path) -> dict:
    """What the features stage runs, on the project's manifests, into `out_dir`."""
    params = load_params(root / "params.yaml")
    return compute_features(read_table(root / "interim" / "artworks.parquet"),
                            read_table(root / "interim" / "tracks.parquet"),
                            root / params.ingest.artgraph_dir, root / params.ingest.fma_dir, out_dir,
                            params.features, params.audio, quiet=True)


@pytest.mark.slow
def test_fanned_out_cache_equals_the_serial_one_and_the_stage_computes_nothing(project: Path) -> None:
    summaries = {line["modality"]: line for line in run_fanout(project, "--files-per-task", "3")}
    # 10 distinct images (11 files) and 10 tracks, 4 files per task (3 rounded up to whole batches of 2).
    assert summaries["image"] == {"modality": "image", "contents": N_ITEMS, "cached": 0, "tasks": 3,
                                  "stored": N_ITEMS, "failed": 0}
    assert summaries["audio"]["tasks"] == 3 and summaries["audio"]["stored"] == N_ITEMS

    serial_dir = project / "serial"
    serial_summary = run_stage_library(project, serial_dir)
    assert serial_summary["image_computed"] == serial_summary["audio_computed"] == N_ITEMS
    fanned, serial = caches(project / "features", project), caches(serial_dir, project)
    for modality in ("image", "audio"):
        assert fanned[modality].directory.name == serial[modality].directory.name  # the same namespace
        keys = sorted(serial[modality].rows)
        assert sorted(fanned[modality].rows) == keys
        assert torch.equal(fanned[modality].get(keys), serial[modality].get(keys))

    # The stage after the fan-out: every embedding from the cache, outputs identical to the serial run's.
    stage_summary = run_stage_library(project, project / "features")
    assert stage_summary["image_computed"] == stage_summary["audio_computed"] == 0
    assert stage_summary["image_cached"] == stage_summary["audio_cached"] == N_ITEMS
    assert stage_summary["image_embedded"] == N_ITEMS + 1  # the duplicate content has its own row
    for name in EMBEDDING_FILES.values():
        assert (project / "features" / name).read_bytes() == (serial_dir / name).read_bytes()

    # What a second fan-out would submit: nothing.
    manifests = {"image": ("artworks.parquet", "artwork_id"), "audio": ("tracks.parquet", "track_id")}
    for modality, (name, id_column) in manifests.items():
        items = manifest_items(read_table(project / "interim" / name), id_column)
        assert pending_contents(items, caches(project / "features", project)[modality]).empty


def test_fanout_refuses_a_project_without_manifests(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    with pytest.raises(Art2MusError, match=f"{tmp_path / 'interim' / 'artworks.parquet'} not found: run the ingest"):
        features_fanout.fn(project_dir=str(tmp_path))


def test_shards_are_whole_batches_in_manifest_order() -> None:
    pending = pd.DataFrame({"id": list("abcdefg"), "path": list("abcdefg"), "sha256": list("abcdefg")})
    shards = split_into_shards(pending, files_per_task=3, batch_size=2)
    assert [list(shard["id"]) for shard in shards] == [list("abcd"), list("efg")]
    assert [len(shard) for shard in split_into_shards(pending, files_per_task=1, batch_size=4)] == [4, 3]
