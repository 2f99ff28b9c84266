"""Peak memory of the `features` and `latents` computations as the dataset grows.

Target: flat, peak RSS at 4N at most 10 % above peak RSS at N, for each stage. Each (stage, size)
runs in a fresh process that only loads its inputs and makes the library call its stage makes
(`compute_features` on the ingest manifests; `compute_latents` with the prior's saved tiny
backbone); the sample, the ingest and the backbone are prepared here. The sizes are the first N,
2N, 4N artworks and tracks of one ingested sample, so every size reads the same kind of files.

A peak includes the baseline (the process after its imports and inputs are loaded, ~0.8-0.9 GB,
mostly torch); the memory above it and the growth per 1000 pairs show what the computation itself
adds, which a large baseline can hide in the peak ratio.

Training (`train_aligner` over cached latents, as the `train` stage streams them): anonymous memory
(RssAnon) of the training process as the cached pairs grow 10x (64 -> 640 tiny pairs; quick 32 -> 320),
each size in a fresh process over its own shards written with `write_shard`. RssAnon, not RSS: the
shards are memory-mapped, and the mapped pages a step reads count in RSS (RssFile) though the kernel
drops them at will; what must stay flat is what the process itself allocates. The peak is sampled
every few ms through the run. Target: RssAnon peak at 10x at most 10 % above the one at 1x.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from art2mus.config import AudioParams, BackboneParams, FeaturesParams, IngestParams, LatentsParams, SampleParams, TrainParams
from art2mus.data.ingest import ingest
from art2mus.data.sample import make_sample
from art2mus.data.schema import ARTWORKS_MANIFEST, TRACKS_MANIFEST
from art2mus.io import read_table, write_table_atomic
from art2mus.models.tiny import build_tiny_backbone, save_tiny_backbone

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("features", "latents")
TARGET_PEAK_RATIO = 1.1

MEASURE_CHILD = """
import json, sys
from pathlib import Path
from bench.memory import measure_stage
print(json.dumps(measure_stage(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
"""
TRAINING_CHILD = """
import json, sys
from pathlib import Path
from bench.memory import measure_training
print(json.dumps(measure_training(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))))
"""
TRAINING_SIZES = {False: [64, 640], True: [32, 320]}  # quick: True
TRAINING_STEPS = {False: 8, True: 2}
IMAGE_DIM = 32  # the tiny image encoder's width; any width trains the same way
SHARD_PAIRS = 64  # pairs per written shard: 640 pairs are 10 shards


def memory_status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB: VmRSS (now) or VmHWM (peak of this process image).

    VmHWM rather than getrusage: after a vfork + exec, ru_maxrss also counts the parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_stage(stage: str, work: Path, manifests: Path, out_dir: Path) -> dict:
    """Run one stage's computation in this (fresh) process; its seconds, items and peak RSS."""
    from art2mus.data.latents import compute_latents
    from art2mus.features.embeddings import compute_features
    from art2mus.models.loader import load_backbone

    audio = AudioParams()
    artworks, tracks = read_table(manifests / ARTWORKS_MANIFEST), read_table(manifests / TRACKS_MANIFEST)
    backbone = load_backbone(work / "prior") if stage == "latents" else None
    baseline = memory_status_mb("VmRSS")
    started = time.perf_counter()
    if stage == "features":
        summary = compute_features(artworks, tracks, work / "sample" / "artgraph", work / "sample" / "fma", out_dir,
                                   FeaturesParams(), audio, quiet=True)
        items = summary["image_embedded"] + summary["audio_embedded"]
    else:
        assert backbone is not None  # loaded above, before the baseline, for the latents stage
        summary = compute_latents(tracks, work / "sample" / "fma", backbone, audio, out_dir,
                                  LatentsParams().batch_size, quiet=True)
        items = summary["tracks"]
    seconds = time.perf_counter() - started
    peak = memory_status_mb("VmHWM")
    return {"seconds": seconds, "items": items, "baseline_rss_mb": baseline, "peak_rss_mb": peak,
            "above_baseline_mb": peak - baseline}


class RssAnonPeak:
    """The highest RssAnon of this process, sampled by a thread every `interval` seconds while in the block."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak_mb = interval, 0.0
        self._done = threading.Event()

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak_mb = max(self.peak_mb, memory_status_mb("RssAnon"))
            self._done.wait(self.interval)

    def __enter__(self) -> RssAnonPeak:
        self.peak_mb = memory_status_mb("RssAnon")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, memory_status_mb("RssAnon"))


def write_cached_pairs(out_dir: Path, n: int, latent_shape: tuple[int, ...], seed: int = 0) -> None:
    """`n` random latent posteriors as the latents stage caches them: shards of SHARD_PAIRS rows and an index."""
    import torch

    from art2mus.data.latents import CACHE_DIR, INDEX_FILE, write_shard

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for start in range(0, n, SHARD_PAIRS):
        keys = [f"pair-{i}" for i in range(start, min(n, start + SHARD_PAIRS))]
        means = [torch.randn(latent_shape, generator=generator) for _ in keys]
        stds = [torch.rand(latent_shape, generator=generator) * 0.1 for _ in keys]
        located = write_shard(out_dir / CACHE_DIR, keys, means, stds)
        rows += [{"track_id": int(key.split("-")[1]), "key": key, "shard": located[key][0], "row": located[key][1],
                  "sha256": located[key][2]} for key in keys]
    pd.DataFrame(rows).to_parquet(out_dir / INDEX_FILE, index=False)


def measure_training(work: Path, latents_dir: Path, steps: int) -> dict:
    """A few `train_aligner` steps over the cached pairs in `latents_dir`, streamed from their shards as the
    `train` stage reads them, in this (fresh) process; its RssAnon before and (peak) during, RSS and seconds."""
    import torch

    from art2mus.data.latents import LatentPosteriors, load_latent_index
    from art2mus.models.loader import load_backbone
    from art2mus.training.aligner import StreamedPairs, train_aligner

    backbone = load_backbone(work / "prior")
    index = load_latent_index(latents_dir)
    embeds = torch.randn(len(index), IMAGE_DIM, generator=torch.Generator().manual_seed(0))
    data = StreamedPairs(embeds, LatentPosteriors.from_index(latents_dir, index))
    params = TrainParams(steps=steps, batch_size=16, tokens=2, hidden_dim=32, threads=1, checkpoint_every=steps)
    baseline = memory_status_mb("RssAnon")
    started = time.perf_counter()
    with RssAnonPeak() as peak:
        result = train_aligner(data, backbone, params, latents_dir / "aligner", quiet=True)
    return {"pairs": len(data), "steps": len(result.losses), "seconds": time.perf_counter() - started,
            "baseline_rss_anon_mb": baseline, "rss_anon_mb": memory_status_mb("RssAnon"),
            "peak_rss_anon_mb": peak.peak_mb, "rss_file_mb": memory_status_mb("RssFile"),
            "peak_rss_mb": memory_status_mb("VmHWM")}


def training_in_fresh_process(work: Path, n: int, steps: int) -> dict:
    """`measure_training` over n cached pairs, in a new Python process."""
    result = subprocess.run([sys.executable, "-c", TRAINING_CHILD, str(work), str(work / f"latents-{n}"), str(steps)],
                            check=False, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"memory bench: training on {n} cached pairs failed:\n{result.stderr[-3000:]}")
    return {"size": n, **json.loads(result.stdout.strip().splitlines()[-1])}


def training_memory(work: Path, quick: bool) -> dict:
    """RssAnon of training over 1x and 10x cached pairs (one fresh process per size, one after the other:
    RssAnon is the process's own, but the two would share the cores the sampler runs on)."""
    from art2mus.models.loader import load_backbone

    sizes, steps = TRAINING_SIZES[quick], TRAINING_STEPS[quick]
    latent_shape = tuple(load_backbone(work / "prior").latent_shape)
    for n in sizes:
        write_cached_pairs(work / f"latents-{n}", n, latent_shape)
    rows = [training_in_fresh_process(work, n, steps) for n in sizes]
    smallest, largest = rows[0], rows[-1]
    return {"rows": rows, "latent_shape": list(latent_shape),
            "cached_mb_largest": largest["size"] * 2 * 4 * math.prod(latent_shape) / 2**20,  # mean + std, float32
            "rss_anon_peak_largest_vs_smallest": largest["peak_rss_anon_mb"] / smallest["peak_rss_anon_mb"],
            "rss_anon_growth_mb_per_1000_pairs": 1000 * (largest["peak_rss_anon_mb"] - smallest["peak_rss_anon_mb"])
            / (largest["size"] - smallest["size"])}


def prepare(work: Path, sizes: list[int]) -> None:
    """One sample of max(sizes) pairs, ingested; manifests of the first n rows per size; a saved tiny prior."""
    largest = max(sizes)
    make_sample(SampleParams(n_artworks=largest, n_extra_tracks=0, n_artists=max(3, largest // 8)), AudioParams(),
                work / "sample")
    ingest(work / "sample" / "artgraph", work / "sample" / "fma", work / "interim", IngestParams(), quiet=True)
    artworks, tracks = read_table(work / "interim" / ARTWORKS_MANIFEST), read_table(work / "interim" / TRACKS_MANIFEST)
    for n in sizes:
        write_table_atomic(artworks.head(n), work / f"manifests-{n}" / ARTWORKS_MANIFEST)
        write_table_atomic(tracks.head(n), work / f"manifests-{n}" / TRACKS_MANIFEST)
    save_tiny_backbone(build_tiny_backbone(BackboneParams(), AudioParams()), work / "prior")


def stage_in_fresh_process(stage: str, work: Path, n: int) -> dict:
    """`measure_stage` for the first n pairs, in a new Python process."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_CHILD, stage, str(work), str(work / f"manifests-{n}"),
         str(work / f"out-{stage}-{n}")],
        check=False, capture_output=True, text=True, cwd=ROOT,
    )
    if result.returncode:
        raise RuntimeError(f"memory bench: {stage} on {n} pairs failed:\n{result.stderr[-3000:]}")
    return {"stage": stage, "size": n, **json.loads(result.stdout.strip().splitlines()[-1])}


def run(quick: bool = False) -> dict:
    sizes = [8, 32] if quick else [64, 128, 256]  # quick: only N and 4N (a process per size)
    with tempfile.TemporaryDirectory(prefix="art2mus-bench-") as tmp:
        work = Path(tmp)
        logger.info("memory bench: sample of %d pairs, ingest, tiny prior", max(sizes))
        prepare(work, sizes)
        jobs = [(stage, n) for stage in STAGES for n in sizes]
        # Two processes at a time: peak RSS is per process, so running side by side does not change it.
        with ThreadPoolExecutor(max_workers=2) as pool:
            rows = list(pool.map(lambda job: stage_in_fresh_process(job[0], work, job[1]), jobs))
        logger.info("memory bench: training over %s cached pairs", " and ".join(map(str, TRAINING_SIZES[quick])))
        training = training_memory(work, quick)
    stages, goals = {}, {}
    for stage in STAGES:
        stage_rows = [row for row in rows if row["stage"] == stage]
        smallest, largest = stage_rows[0], stage_rows[-1]
        ratio = largest["peak_rss_mb"] / smallest["peak_rss_mb"]
        growth = (largest["peak_rss_mb"] - smallest["peak_rss_mb"]) / (largest["size"] - smallest["size"])
        stages[stage] = {
            "rows": stage_rows,
            "peak_largest_vs_smallest": ratio,
            "above_baseline_largest_vs_smallest": largest["above_baseline_mb"] / smallest["above_baseline_mb"],
            "peak_growth_mb_per_1000_pairs": 1000 * growth,
        }
        goals[f"{stage}_peak_flat"] = {"value": ratio, "target": TARGET_PEAK_RATIO,
                                       "met": bool(ratio <= TARGET_PEAK_RATIO)}
    ratio = training["rss_anon_peak_largest_vs_smallest"]
    goals["training_rss_anon_flat"] = {"value": ratio, "target": TARGET_PEAK_RATIO,
                                       "met": bool(ratio <= TARGET_PEAK_RATIO)}
    return {"benchmark": "memory", "sizes": sizes, "stages": stages, "training": training, "goals": goals}
