"""The `features-fanout` flow: the features stage's embeddings precomputed in parallel, one task per shard of files.

The flow fills the same content-addressed cache the `features` stage reads (art2mus/features/cache.py,
`<features.out_dir>/shards/`), so a later `dvc repro` runs the stage with every embedding cached: it only
gathers rows and writes its outputs. Nothing here replaces the stage; it spreads its expensive part.

- Files still missing from the cache (distinct contents, manifest order) are cut into shards of
  `files_per_task` files (a multiple of `features.batch_size`, so every file meets the encoder in the
  same batch as in the stage), one Prefect task per shard, on whatever task runner the flow is given:
  a `DaskTaskRunner` on a `LocalCluster` of worker processes here, or on a real Dask cluster by
  address (`dask_runner`). Workers need the media at the same paths (a shared volume) and the project
  importable (the training image, a checkout as the working directory); they write nothing.
- Tasks return (content hashes, embeddings); the flow process is the only writer of the cache and
  stores each shard's result as soon as it arrives, so an interrupted run keeps everything finished.
- A worker keeps its last encoder loaded between tasks (`cached_encoder`); images are done before
  audio, so one worker never holds both (ImageBind-huge twice would not fit).
- Files that cannot be decoded are reported, not cached: the stage records them as it always does.
- Do not run it while `dvc repro` runs the `features` stage on the same checkout: each would write
  shards the other does not know of (the cache tolerates it, but files are embedded twice).

Run it from the project root after the raw gate (the manifests come from `ingest`):

    dvc repro validate_raw
    python -m flows.features --workers 2              # a LocalCluster of 2 processes
    python -m flows.features --address tcp://dask-scheduler:8786
    dvc repro                                         # features finds everything cached
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import torch
import typer
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from art2mus.config import AudioParams, EncoderSpec, Params, load_params
from art2mus.data.schema import ARTWORKS_MANIFEST, TRACKS_MANIFEST
from art2mus.errors import Art2MusError
from art2mus.features.cache import EmbeddingCache
from art2mus.features.embeddings import (
    SHARDS_DIR,
    embed_files,
    manifest_items,
    shaping_params,
)

DEFAULT_FILES_PER_TASK = 256
MODALITIES = {"image": ("artwork_id", ARTWORKS_MANIFEST), "audio": ("track_id", TRACKS_MANIFEST)}


@dataclass
class ShardEmbeddings:
    """What one task computed: embeddings [N, D] of N content hashes, and the files it could not read."""

    hashes: list[str]
    matrix: torch.Tensor
    failures: list[dict[str, str]] = field(default_factory=list)


@dataclass
class FanoutSummary:
    """Per modality: distinct contents, those already cached, tasks run, embeddings stored, failures."""

    modality: str
    contents: int
    cached: int
    tasks: int = 0
    stored: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)


@functools.lru_cache(maxsize=1)
def cached_encoder(spec_json: str, role: str, device: str) -> Any:
    """The encoder a worker process loaded last, kept for its next task (one at a time)."""
    from art2mus.models.encoders import EncoderRef

    return EncoderRef(EncoderSpec.model_validate_json(spec_json), role, device).load()


@dataclass(frozen=True)
class WorkerEncoder:
    """An EncoderSource whose `load()` reuses the worker's loaded encoder; the device is the worker's."""

    spec: EncoderSpec
    role: str

    @functools.cached_property
    def ref(self):
        from art2mus.models.encoders import EncoderRef, default_device

        return EncoderRef(self.spec, self.role, default_device())

    @property
    def encoder_id(self) -> str:
        return self.ref.encoder_id

    @property
    def shared_space(self) -> str | None:
        return self.ref.shared_space

    def load(self) -> Any:
        return cached_encoder(self.spec.model_dump_json(), self.role, self.ref.device)


def pending_contents(items: pd.DataFrame, cache: EmbeddingCache) -> pd.DataFrame:
    """One row (id = content hash, path, sha256) per distinct content not in the cache, manifest order."""
    distinct = items.drop_duplicates("sha256")
    pending = distinct[distinct["sha256"].isin(set(cache.missing(distinct["sha256"])))]
    return pending.assign(id=pending["sha256"]).reset_index(drop=True)


def split_into_shards(pending: pd.DataFrame, files_per_task: int, batch_size: int) -> list[pd.DataFrame]:
    """Consecutive shards of at most `files_per_task` rows, rounded up to whole encoder batches."""
    size = max(batch_size, math.ceil(files_per_task / batch_size) * batch_size)
    return [pending.iloc[start: start + size] for start in range(0, len(pending), size)]


# No timeout: a task on a Dask worker runs in a worker thread, which a Prefect timeout cannot interrupt.
@task(name="embed shard", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def embed_shard(modality: str, rows: list[dict[str, str]], media_root: str, spec: EncoderSpec, audio: AudioParams,
                batch_size: int) -> ShardEmbeddings:
    """Embed one shard's files on a worker: `embed_files` against a scratch cache, the rows handed back."""
    source = WorkerEncoder(spec, modality)
    items = pd.DataFrame(rows, columns=["id", "path", "sha256"])
    with tempfile.TemporaryDirectory(prefix="art2mus-shard-") as scratch:
        cache = EmbeddingCache(Path(scratch), modality, source.encoder_id, source.shared_space,
                               shaping_params(modality, audio))
        run = embed_files(modality, items, Path(media_root), cache, source, audio, batch_size=batch_size,
                          shard_size=max(len(items), 1), quiet=True)
    return ShardEmbeddings(hashes=[str(value) for value in run.embeddings.ids], matrix=run.embeddings.matrix,
                           failures=run.failures)


def store(cache: EmbeddingCache, result: ShardEmbeddings, shard_size: int) -> int:
    """Add a task's embeddings to the cache in shards of at most `shard_size` rows; returns how many."""
    keep = [position for position, content_hash in enumerate(result.hashes) if content_hash not in cache]
    hashes = [result.hashes[position] for position in keep]
    matrix = result.matrix[keep]
    for start in range(0, len(hashes), shard_size):
        cache.add(hashes[start: start + shard_size], matrix[start: start + shard_size])
    return len(hashes)


def fan_out(modality: str, items: pd.DataFrame, media_root: Path, cache: EmbeddingCache, spec: EncoderSpec,
            params: Params, files_per_task: int) -> FanoutSummary:
    """Submit one task per shard of the missing files and store each result as it completes."""
    logger = get_run_logger()
    config = params.features
    pending = pending_contents(items, cache)
    summary = FanoutSummary(modality, contents=items["sha256"].nunique(), cached=items["sha256"].nunique() - len(pending))
    shards = split_into_shards(pending, files_per_task, config.batch_size)
    summary.tasks = len(shards)
    logger.info("features: %s: %d distinct contents, %d cached, %d to embed in %d task(s)", modality,
                summary.contents, summary.cached, len(pending), len(shards))
    futures = [
        embed_shard.with_options(task_run_name=f"embed {modality} shard {number}").submit(
            modality, shard[["id", "path", "sha256"]].to_dict("records"), str(media_root), spec, params.audio,
            config.batch_size)
        for number, shard in enumerate(shards)
    ]
    errors = []
    for future in as_completed(futures):
        try:
            result = future.result()
        except Exception as error:  # keep every other shard's work; report all failures together
            errors.append(f"{type(error).__name__}: {error}")
            continue
        summary.stored += store(cache, result, config.shard_size)
        summary.failed.extend(result.failures)
    if errors:
        raise Art2MusError(f"features: {len(errors)} of {len(shards)} {modality} task(s) failed "
                           f"({summary.stored} embeddings stored; a re-run embeds only what is missing):\n"
                           + "\n".join(errors))
    return summary


def read_manifest(manifests: Path, name: str, id_column: str) -> pd.DataFrame:
    from art2mus.io import read_table

    path = manifests / name
    if not path.is_file():
        raise Art2MusError(f"{path} not found: run the ingest stage and its gate first (dvc repro validate_raw)")
    return manifest_items(read_table(path), id_column)


@flow(name="features-fanout", log_prints=False, validate_parameters=True)
def features_fanout(project_dir: str = ".", params_file: str = "params.yaml",
                    files_per_task: int = DEFAULT_FILES_PER_TASK) -> list[FanoutSummary]:
    """Fill the features stage's embedding cache, one task per shard of missing files (images, then audio)."""
    if files_per_task < 1:
        raise Art2MusError(f"files_per_task must be at least 1, got {files_per_task}")
    root = Path(project_dir).resolve()
    params = load_params(root / params_file)
    config = params.features
    media = {"image": root / params.ingest.artgraph_dir, "audio": root / params.ingest.fma_dir}
    specs = {"image": config.image_encoder, "audio": config.audio_embedder}
    summaries = []
    for modality, (id_column, manifest) in MODALITIES.items():
        items = read_manifest(root / params.ingest.out_dir, manifest, id_column)
        source = WorkerEncoder(specs[modality], modality)
        cache = EmbeddingCache(root / config.out_dir / SHARDS_DIR, modality, source.encoder_id, source.shared_space,
                               shaping_params(modality, params.audio))
        summaries.append(fan_out(modality, items, media[modality], cache, specs[modality], params, files_per_task))
    logger = get_run_logger()
    for summary in summaries:
        logger.info("features: %s: %d stored, %d already cached, %d failed to decode (the stage records them)",
                    summary.modality, summary.stored, summary.cached, len(summary.failed))
    return summaries


def dask_runner(address: str | None = None, workers: int = 2):
    """A DaskTaskRunner: the cluster at `address`, else a LocalCluster of `workers` one-thread processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})


@contextlib.contextmanager
def shared_prefect_api() -> Iterator[str | None]:
    """The Prefect API the flow and its Dask workers all report to.

    With PREFECT_API_URL set, that server. Otherwise Prefect's temporary server, started here and
    exported before the workers start: left alone, each worker process would start its own.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    server = SubprocessASGIServer()  # the instance Prefect's ephemeral mode would use in this process
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        APILogWorker.drain_all(timeout=10)  # the run's last logs and events, while the server still answers
        EventsWorker.drain_all(timeout=10)
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def precompute_features(project_dir: str = ".", address: str | None = None, workers: int = 2,
                        files_per_task: int = DEFAULT_FILES_PER_TASK) -> list[FanoutSummary]:
    """Run `features_fanout` on a Dask task runner (see `dask_runner`)."""
    fanout = features_fanout.with_options(task_runner=dask_runner(address, workers))
    with shared_prefect_api():
        return fanout(project_dir=project_dir, files_per_task=files_per_task)


def main(
    address: Annotated[str | None, typer.Option(help="Dask scheduler address; default: a local cluster.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes of the local cluster.")] = 2,
    files_per_task: Annotated[int, typer.Option(min=1, help="Files per task (rounded up to whole batches).")]
    = DEFAULT_FILES_PER_TASK,
) -> None:
    """Precompute the features stage's embeddings on Dask, from the project root."""
    from art2mus.env import configure_environment, project_root

    root = configure_environment(project_root())
    try:
        summaries = precompute_features(str(root), address, workers, files_per_task)
    except Art2MusError as error:
        typer.echo(f"art2mus: {error}", err=True)
        raise typer.Exit(1) from None
    for summary in summaries:
        typer.echo(json.dumps({"modality": summary.modality, "contents": summary.contents, "cached": summary.cached,
                               "tasks": summary.tasks, "stored": summary.stored, "failed": len(summary.failed)}))


if __name__ == "__main__":
    # Run the importable module, not __main__: Dask workers import the tasks by their module's name.
    from flows.features import main as entry

    typer.run(entry)
