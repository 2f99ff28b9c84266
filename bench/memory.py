"""Peak memory of the `features` and `latents` computations as the dataset grows.

Target: flat, peak RSS at 4N at most 10 % above peak RSS at N, for each stage. Each (stage, size)
runs in a fresh process that only loads its inputs and makes the library call its stage makes
(`compute_features` on the ingest manifests; `compute_latents` with the prior's saved tiny
backbone); the sample, the ingest and the backbone are prepared here. The sizes are the first N,
2N, 4N artworks and tracks of one ingested sample, so every size reads the same kind of files.

A peak includes the baseline (the process after its imports and inputs are loaded, ~0.8-0.9 GB,
mostly torch); the memory above it and the growth per 1000 pairs show what the computation itself
adds, which a large baseline can hide in the peak ratio.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from art2mus.config import AudioParams, BackboneParams, FeaturesParams, IngestParams, LatentsParams, SampleParams
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
        summary = compute_latents(tracks, work / "sample" / "fma", backbone, audio, out_dir,
                                  LatentsParams().batch_size, quiet=True)
        items = summary["tracks"]
    seconds = time.perf_counter() - started
    peak = memory_status_mb("VmHWM")
    return {"seconds": seconds, "items": items, "baseline_rss_mb": baseline, "peak_rss_mb": peak,
            "above_baseline_mb": peak - baseline}


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
    return {"benchmark": "memory", "sizes": sizes, "stages": stages, "goals": goals}
