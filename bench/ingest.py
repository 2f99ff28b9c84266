"""Ingest: throughput against raw decoding of the same files, and peak memory as the data grows.

Targets: cold ingest with 2 workers at least as fast as decoding the files one by one in one
process (it also hashes every file), a warm re-run far faster, and peak memory flat in the
dataset size (each size measured in a fresh process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from art2mus.config import AudioParams, SampleParams
from art2mus.data.probe import probe_audio, probe_image
from art2mus.data.sample import make_sample

MEASURE_CHILD = """
def peak_mb():
    # This process's own peak RSS (VmHWM): ru_maxrss would also count the parent's peak.
    with open("/proc/self/status") as status:
        return next(float(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
import json, resource, sys, time
from pathlib import Path
from art2mus.config import IngestParams
from art2mus.data.ingest import ingest
root, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
started = time.perf_counter()
summary = ingest(root / "artgraph", root / "fma", out, IngestParams(workers=workers), quiet=True)
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "summary": summary,
                  "peak_rss_mb": peak_mb(),
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def make_dataset(root: Path, n_artworks: int) -> int:
    """A sample of `n_artworks` pairs; returns the number of media files."""
    params = SampleParams(n_artworks=n_artworks, n_extra_tracks=n_artworks // 10, n_artists=max(3, n_artworks // 8))
    make_sample(params, AudioParams(), root)
    return sum(1 for p in root.rglob("*") if p.suffix in {".jpg", ".mp3"})


def raw_decode_seconds(root: Path) -> float:
    """Decode every image and track one by one in this process: the floor ingest is compared to."""
    started = time.perf_counter()
    for path in sorted(root.rglob("*.jpg")):
        probe_image(path)
    for path in sorted(root.rglob("*.mp3")):
        probe_audio(path)
    return time.perf_counter() - started


def ingest_in_fresh_process(root: Path, out: Path, workers: int) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE_CHILD, str(root), str(out), str(workers)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    sizes = [32, 64, 128] if quick else [250, 500, 1000, 2000]
    rows = []
    with tempfile.TemporaryDirectory(prefix="art2mus-bench-") as tmp:
        for n in sizes:
            root, out = Path(tmp) / f"data{n}", Path(tmp) / f"out{n}"
            files = make_dataset(root, n)
            decode = raw_decode_seconds(root)
            cold = ingest_in_fresh_process(root, out, workers=2)
            warm = ingest_in_fresh_process(root, out, workers=2)
            rows.append({
                "files": files,
                "raw_decode_files_per_s": files / decode,
                "ingest_cold_files_per_s": files / cold["seconds"],
                "ingest_warm_files_per_s": files / warm["seconds"],
                "cold_vs_raw_decode": decode / cold["seconds"],
                "warm_vs_cold": cold["seconds"] / warm["seconds"],
                "peak_rss_mb": cold["peak_rss_mb"],
                "worker_peak_rss_mb": cold["worker_peak_rss_mb"],
                "warm_files_decoded": warm["summary"]["files_decoded"],
            })
    return {
        "benchmark": "ingest",
        "rows": rows,
        "peak_rss_largest_vs_smallest": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"],
        "files_largest_vs_smallest": rows[-1]["files"] / rows[0]["files"],
    }
