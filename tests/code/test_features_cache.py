"""The features cache: content-addressed, incremental, invalidated by the encoder, tolerant of bad files."""

from __future__ import annotations

import hashlib
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import torch

from art2mus.config import AudioParams, EncoderSpec, FeaturesParams, IngestParams
from art2mus.data.ingest import ingest
from art2mus.errors import Art2MusError
from art2mus.features import compute_features, load_embeddings
from art2mus.features.cache import EmbeddingCache
from art2mus.features.embeddings import EMBEDDING_FILES, FAILED_FILE, SHARDS_DIR, SUMMARY_FILE
from art2mus.io import read_table
from art2mus.models.encoders import build_tiny_audio_embedder, build_tiny_image_encoder, load_image_encoder
from tests.corpus import make_raw_dataset

N_ITEMS = 8
AUDIO = AudioParams(crop_offset_seconds=0.25, crop_seconds=1.0)  # the corpus' tracks are 1.5 s long
OUTPUTS = [*EMBEDDING_FILES.values(), FAILED_FILE, SUMMARY_FILE]


class CountingEncoder:
    """Wraps an encoder and counts what it embeds."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.encoder_id, self.shared_space, self.dim = encoder.encoder_id, encoder.shared_space, encoder.dim
        self.items = 0

    def embed_images(self, images):
        self.items += len(images)
        return self.encoder.embed_images(images)

    def embed_audio(self, waveforms, sample_rate):
        self.items += len(waveforms)
        return self.encoder.embed_audio(waveforms, sample_rate)


class CountingSource:
    """An EncoderSource whose loads and encodings are counted."""

    def __init__(self, encoder) -> None:
        self.encoder = CountingEncoder(encoder)
        self.encoder_id, self.shared_space = encoder.encoder_id, encoder.shared_space
        self.loads = 0

    def load(self) -> CountingEncoder:
        self.loads += 1
        return self.encoder

    @property
    def items(self) -> int:
        return self.encoder.items


@pytest.fixture(scope="module")
def tiny_encoders():
    return build_tiny_image_encoder(), build_tiny_audio_embedder()


class Corpus(NamedTuple):
    artgraph: Path
    fma: Path
    artworks: pd.DataFrame
    tracks: pd.DataFrame


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """A raw ArtGraph + FMA copy and its manifests (read-only: tests copy what they change)."""
    root = tmp_path_factory.mktemp("corpus")
    artgraph, fma = make_raw_dataset(root / "raw", N_ITEMS, N_ITEMS)
    params = IngestParams(artgraph_dir=str(artgraph), fma_dir=str(fma), out_dir=str(root / "interim"))
    ingest(artgraph, fma, root / "interim", params, quiet=True)
    manifests = root / "interim"
    return Corpus(artgraph, fma, read_table(manifests / "artworks.parquet"), read_table(manifests / "tracks.parquet"))


def sources(encoders) -> tuple[CountingSource, CountingSource]:
    """Fresh counters around (image encoder, audio embedder)."""
    return CountingSource(encoders[0]), CountingSource(encoders[1])


def run(corpus: Corpus, out_dir: Path, image, audio, artworks=None, tracks=None, artgraph=None, fma=None, **config):
    """compute_features on the corpus (or on the given replacements of its parts)."""
    return compute_features(
        corpus.artworks if artworks is None else artworks,
        corpus.tracks if tracks is None else tracks,
        artgraph or corpus.artgraph, fma or corpus.fma, out_dir,
        FeaturesParams(**{"batch_size": 3, "shard_size": 4, **config}), AUDIO,
        image_encoder=image, audio_embedder=audio, quiet=True,
    )


def outputs(out_dir: Path) -> dict[str, bytes]:
    return {name: (out_dir / name).read_bytes() for name in OUTPUTS}


def test_warm_run_reuses_every_embedding_and_writes_identical_outputs(tiny_encoders, corpus, tmp_path: Path) -> None:
    out_dir = tmp_path / "features"
    image, audio = sources(tiny_encoders)
    summary = run(corpus, out_dir, image, audio)
    assert (image.loads, image.items, audio.loads, audio.items) == (1, N_ITEMS, 1, N_ITEMS)
    assert summary["image_embedded"] == summary["audio_embedded"] == N_ITEMS
    assert summary["image_failed"] == summary["audio_failed"] == 0
    cold = outputs(out_dir)
    image, audio = sources(tiny_encoders)
    summary = run(corpus, out_dir, image, audio)
    assert (image.loads, image.items, audio.loads, audio.items) == (0, 0, 0, 0)  # not even loaded
    assert summary["image_cached"] == summary["audio_cached"] == N_ITEMS
    assert outputs(out_dir) == cold

    artworks, tracks = corpus.artworks, corpus.tracks
    images = load_embeddings(out_dir, "image")
    assert images.ids == list(artworks["artwork_id"]) and images.matrix.shape == (N_ITEMS, tiny_encoders[0].dim)
    assert images.encoder_id == tiny_encoders[0].encoder_id and images.shared_space is None
    sounds = load_embeddings(out_dir, "audio")
    assert sounds.ids == [int(value) for value in tracks["track_id"]]
    assert sounds.matrix.shape == (N_ITEMS, tiny_encoders[1].dim) and sounds.matrix.dtype == torch.float32
    assert read_table(out_dir / FAILED_FILE).empty


def test_one_new_file_costs_one_encoding(tiny_encoders, corpus, tmp_path: Path) -> None:
    out_dir = tmp_path / "features"
    artworks, tracks = corpus.artworks, corpus.tracks
    image, audio = sources(tiny_encoders)
    run(corpus, out_dir, image, audio, artworks=artworks.iloc[:-1], tracks=tracks.iloc[:-1])
    before = load_embeddings(out_dir, "image")
    image, audio = sources(tiny_encoders)
    summary = run(corpus, out_dir, image, audio)
    assert (image.items, audio.items) == (1, 1)
    assert summary["image_cached"] == summary["audio_cached"] == N_ITEMS - 1
    after = load_embeddings(out_dir, "image")
    assert after.ids == list(artworks["artwork_id"])
    assert torch.equal(after.matrix[:-1], before.matrix)  # old rows come from the cache, bit for bit
    fresh = tmp_path / "fresh"
    image, audio = sources(tiny_encoders)
    run(corpus, fresh, image, audio)
    assert torch.allclose(load_embeddings(fresh, "image").matrix, after.matrix, atol=1e-5)


def test_the_same_content_under_two_names_is_embedded_once(tiny_encoders, corpus, tmp_path: Path) -> None:
    artgraph = tmp_path / "artgraph"
    shutil.copytree(corpus.artgraph, artgraph)
    artworks = corpus.artworks.copy()
    first = artworks.iloc[0]
    shutil.copy(artgraph / first["path"], artgraph / "imagesf2" / "copy.jpg")
    duplicate = first.copy()
    duplicate["artwork_id"], duplicate["path"] = "copy.jpg", "imagesf2/copy.jpg"
    artworks = pd.concat([artworks, duplicate.to_frame().T], ignore_index=True)
    image, audio = sources(tiny_encoders)
    run(corpus, tmp_path / "features", image, audio, artworks=artworks, artgraph=artgraph)
    assert image.items == N_ITEMS
    images = load_embeddings(tmp_path / "features", "image")
    assert images.ids[-1] == "copy.jpg" and torch.equal(images.matrix[0], images.matrix[-1])


def test_a_changed_encoder_id_invalidates_and_switching_back_is_free(tiny_encoders, corpus, tmp_path: Path) -> None:
    out_dir = tmp_path / "features"
    image, audio = sources(tiny_encoders)
    run(corpus, out_dir, image, audio)
    other = build_tiny_image_encoder(seed=1)
    assert other.encoder_id != tiny_encoders[0].encoder_id
    image, audio = sources((other, tiny_encoders[1]))
    run(corpus, out_dir, image, audio)
    assert (image.items, audio.items) == (N_ITEMS, 0)
    assert load_embeddings(out_dir, "image").encoder_id == other.encoder_id
    image, audio = sources(tiny_encoders)
    run(corpus, out_dir, image, audio)
    assert (image.items, audio.items) == (0, 0)
    image, audio = sources(tiny_encoders)  # the audio crop shapes audio embeddings
    compute_features(corpus.artworks, corpus.tracks, corpus.artgraph, corpus.fma, out_dir, FeaturesParams(),
                     AUDIO.model_copy(update={"crop_offset_seconds": 0.0}),
                     image_encoder=image, audio_embedder=audio, quiet=True)
    assert (image.items, audio.items) == (0, N_ITEMS)


def test_bad_files_are_reported_and_the_rest_embedded(tiny_encoders, corpus, tmp_path: Path) -> None:
    artgraph, fma = tmp_path / "artgraph", tmp_path / "fma"
    shutil.copytree(corpus.artgraph, artgraph)
    shutil.copytree(corpus.fma, fma)
    artworks, tracks = corpus.artworks.copy(), corpus.tracks.copy()
    # Corrupt after ingest, with manifests that agree (as if ingest had let them through) ...
    garbage = b"\xff\xd8\xff not really a jpeg"
    (artgraph / artworks.loc[1, "path"]).write_bytes(garbage)
    artworks.loc[1, "sha256"] = hashlib.sha256(garbage).hexdigest()
    noise = b"ID3 not really an mp3" * 10
    (fma / tracks.loc[2, "path"]).write_bytes(noise)
    tracks.loc[2, "sha256"] = hashlib.sha256(noise).hexdigest()
    # ... changed behind ingest's back, and gone.
    (artgraph / artworks.loc[3, "path"]).write_bytes(garbage)
    (fma / tracks.loc[4, "path"]).unlink()

    out_dir = tmp_path / "features"
    image, audio = sources(tiny_encoders)
    summary = run(corpus, out_dir, image, audio, artworks=artworks, tracks=tracks, artgraph=artgraph, fma=fma)
    assert summary["image_failed"] == summary["audio_failed"] == 2
    failed = read_table(out_dir / FAILED_FILE).set_index("path")
    assert list(failed.columns) == ["modality", "item", "reason"]
    assert failed.loc[artworks.loc[1, "path"], "reason"].startswith("cannot decode image")
    assert failed.loc[tracks.loc[2, "path"], "reason"].startswith("cannot decode audio")
    assert "changed since ingest" in failed.loc[artworks.loc[3, "path"], "reason"]
    assert failed.loc[tracks.loc[4, "path"], "item"] == str(tracks.loc[4, "track_id"])
    assert "not found" in failed.loc[tracks.loc[4, "path"], "reason"]
    images, sounds = load_embeddings(out_dir, "image"), load_embeddings(out_dir, "audio")
    assert images.ids == [name for i, name in enumerate(artworks["artwork_id"]) if i not in (1, 3)]
    assert sounds.ids == [int(t) for i, t in enumerate(tracks["track_id"]) if i not in (2, 4)]


def test_shards_are_bounded_and_a_damaged_shard_is_recomputed(tiny_encoders, corpus, tmp_path: Path, caplog) -> None:
    out_dir = tmp_path / "features"
    image, audio = sources(tiny_encoders)
    run(corpus, out_dir, image, audio, batch_size=3, shard_size=3)
    image_dirs = sorted((out_dir / SHARDS_DIR).glob("image-*"))
    assert len(image_dirs) == 1
    shards = sorted(image_dirs[0].glob("part-*.safetensors"))
    from safetensors import safe_open

    sizes = []
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            sizes.append(handle.get_slice("embeddings").get_shape()[0])
    assert sizes == [3, 3, 2]
    expected = load_embeddings(out_dir, "image").matrix
    shards[1].write_bytes(shards[1].read_bytes()[:40])  # truncated
    image, audio = sources(tiny_encoders)
    run(corpus, out_dir, image, audio, batch_size=3, shard_size=3)
    assert (image.items, audio.items) == (3, 0)
    assert "skipping unreadable shard" in caplog.text
    assert torch.allclose(load_embeddings(out_dir, "image").matrix, expected, atol=1e-5)


def test_an_interrupted_run_keeps_what_it_computed(tiny_encoders, corpus: Corpus, tmp_path: Path) -> None:
    out_dir = tmp_path / "features"
    image, audio = sources(tiny_encoders)
    embed_images = image.encoder.embed_images

    def crash_on_second_batch(images):
        if image.items:
            raise RuntimeError("out of memory")
        return embed_images(images)

    image.encoder.embed_images = crash_on_second_batch
    with pytest.raises(RuntimeError, match="out of memory"):
        run(corpus, out_dir, image, audio, batch_size=3, shard_size=100)
    image, audio = sources(tiny_encoders)
    run(corpus, out_dir, image, audio, batch_size=3, shard_size=100)
    assert (image.items, audio.items) == (N_ITEMS - 3, N_ITEMS)


def test_cache_round_trip_and_reader_errors(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "shards", "image", "tiny:x", None, {"features_version": 1})
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5)]
    vectors = torch.randn(5, 7)
    cache.add(hashes[:3], vectors[:3])
    cache.add(hashes[3:], vectors[3:])
    reopened = EmbeddingCache(tmp_path / "shards", "image", "tiny:x", None, {"features_version": 1})
    assert len(reopened) == 5 and reopened.missing([hashes[0], "f" * 64]) == ["f" * 64]
    assert torch.equal(reopened.get(hashes[::-1]), vectors.flip(0))
    other = EmbeddingCache(tmp_path / "shards", "image", "tiny:y", None, {"features_version": 1})
    assert len(other) == 0 and other.directory != cache.directory
    with pytest.raises(ValueError, match="embedding size"):
        reopened.add(["e" * 64], torch.randn(1, 3))
    with pytest.raises(Art2MusError, match="run the features stage first"):
        load_embeddings(tmp_path / "nowhere", "image")


def test_stage_reads_params_and_manifests_and_logs_what_it_did(corpus, tmp_path: Path, monkeypatch) -> None:
    import stages.features as stage

    manifests = tmp_path / "data" / "interim"
    manifests.mkdir(parents=True)
    corpus.artworks.to_parquet(manifests / "artworks.parquet")
    corpus.tracks.to_parquet(manifests / "tracks.parquet")
    (tmp_path / "params.yaml").write_text(
        f"ingest: {{artgraph_dir: '{corpus.artgraph}', fma_dir: '{corpus.fma}', out_dir: data/interim}}\n"
        "audio: {crop_offset_seconds: 0.25, crop_seconds: 1.0}\n"
        "features: {batch_size: 4, out_dir: data/features}\n"
    )
    logged: dict = {}

    class FakeRun:
        def log_metrics(self, metrics):
            logged["metrics"] = dict(metrics)

        def set_tags(self, tags):
            logged["tags"] = dict(tags)

        def log_artifact(self, path):
            logged["artifact"] = Path(path)

    @contextmanager
    def fake_stage_run(name, params, experiment):
        logged["params"] = params
        yield FakeRun()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stage, "stage_run", fake_stage_run)
    stage.main()
    assert logged["metrics"]["image_embedded"] == logged["metrics"]["audio_embedded"] == N_ITEMS
    assert logged["tags"]["image_encoder_id"] == load_image_encoder(EncoderSpec()).encoder_id
    assert logged["params"]["audio"]["crop_seconds"] == 1.0
    assert logged["artifact"] == Path("data/features") / FAILED_FILE
    assert load_embeddings(tmp_path / "data" / "features", "audio").matrix.shape[0] == N_ITEMS
