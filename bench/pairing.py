"""Similarity pairing: the sparse path at full scale, and how it compares with the exact dense one.

Embeddings are planted like tests/code/test_similarity_pairing.py: 3 factors x 4 levels (one-hot)
plus a per-pair identity vector, shared by an artwork and its true track, plus independent noise,
so recovery (artworks paired with their own track) is checkable.

Targets: 10^5 x 10^5 through the sparse path (block-wise top-k, then an auction on the candidate
graph) in minutes on 2 cores with memory far below the 40 GB a full similarity matrix would take
(measured in a fresh process); sparse as good as dense where dense is feasible; on the same
candidates, the auction as good as the exact sparse solver (scipy's LAPJVsp) and faster, and
better than greedy, both on planted factors and with hub tracks (tracks close to every artwork).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import torch  # noqa: F401  imported up front, so the first sparse timing is not an import
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from art2mus.config import SimilarityParams
from art2mus.data.similarity import UNPAIRED_VALUE, auction_matching, pair_by_similarity, top_k_tracks, unit_rows

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SPACE = "imagebind"
N_FACTORS, N_LEVELS = 3, 4
DIM = 64  # 12 factor one-hot dimensions + 52 identity dimensions
NOISE = 1.0
HUB_STRENGTH = 1.0  # tracks get a random share of a direction every artwork leans to: hubs
SEED = 0

MEASURE_CHILD = """
def peak_mb():
    # This process's own peak RSS (VmHWM): ru_maxrss would also count the parent's peak.
    with open("/proc/self/status") as status:
        return next(float(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
import json, resource, sys, time
import numpy as np
import torch  # imported before the baseline: the library imports it lazily on the sparse path
from bench.pairing import SPACE, planted_embeddings
from art2mus.config import SimilarityParams
from art2mus.data.similarity import pair_by_similarity
n, dim, noise = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
image, audio, truth = planted_embeddings(n, dim, noise)
artwork_ids, track_ids = [f"art-{i}" for i in range(n)], np.arange(n)
with open("/proc/self/statm") as statm:
    baseline_mb = int(statm.read().split()[1]) * resource.getpagesize() / 2**20
started = time.perf_counter()
result = pair_by_similarity(artwork_ids, image, track_ids, audio, SPACE, SPACE, SimilarityParams(min_similarity=-1.0))
seconds = time.perf_counter() - started
paired_rows = result.pairs["artwork_id"].str.slice(4).astype(int).to_numpy()
recovered = int((result.pairs["track_id"].to_numpy() == truth[paired_rows]).sum())
print(json.dumps({"seconds": seconds, "recovery": recovered / n, "baseline_rss_mb": baseline_mb,
                  "peak_rss_mb": peak_mb(),
                  "report": result.report}))
"""


def planted_embeddings(
    n_pairs: int, dim: int = DIM, noise: float = NOISE, seed: int = SEED, hub_strength: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image n x dim, audio n x dim, truth): audio row truth[i] is artwork i's own track (float32)."""
    rng = np.random.default_rng(seed)
    identity_dim = dim - N_FACTORS * N_LEVELS
    levels = rng.integers(0, N_LEVELS, (n_pairs, N_FACTORS))
    clean = np.zeros((n_pairs, dim), dtype=np.float32)
    for factor in range(N_FACTORS):
        clean[np.arange(n_pairs), factor * N_LEVELS + levels[:, factor]] = 1 / np.sqrt(N_FACTORS)
    clean[:, N_FACTORS * N_LEVELS:] = rng.standard_normal((n_pairs, identity_dim), dtype=np.float32) / np.sqrt(identity_dim)
    scale = np.float32(noise / np.sqrt(dim))
    image = clean + scale * rng.standard_normal((n_pairs, dim), dtype=np.float32)
    audio = clean + scale * rng.standard_normal((n_pairs, dim), dtype=np.float32)
    if hub_strength:
        common = rng.standard_normal(dim, dtype=np.float32)
        common /= np.linalg.norm(common)
        image += np.float32(0.5 * hub_strength) * common
        audio += hub_strength * np.abs(rng.standard_normal((n_pairs, 1), dtype=np.float32)) * common
    order = rng.permutation(n_pairs)  # tracks in another order than their artworks
    truth = np.argsort(order)
    return image, audio[order], truth


def lapjvsp_matching(candidate_tracks: np.ndarray, candidate_similarity: np.ndarray,
                     n_tracks: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact optimum of the auction's problem, by scipy's LAPJVsp; (rows, cols).

    Made square so LAPJVsp runs its initialisation (it skips it on rectangular input, 2x slower):
    rows = artworks + one "unused" row per track, columns = tracks + one "unpaired" column per
    artwork. An artwork's edges: its candidates (cost 2 - similarity) and its unpaired column
    (cost 2 - UNPAIRED_VALUE); a track's unused row: its track and the unpaired columns of the
    artworks that have it as a candidate (cost 1: the same for every full matching).
    """
    n_images, k = candidate_tracks.shape
    artwork_rows = np.repeat(np.arange(n_images), k)
    rows = np.concatenate([artwork_rows, np.arange(n_images), n_images + np.arange(n_tracks),
                           n_images + candidate_tracks.ravel()])
    cols = np.concatenate([candidate_tracks.ravel(), n_tracks + np.arange(n_images), np.arange(n_tracks),
                           n_tracks + artwork_rows])
    costs = np.concatenate([2.0 - candidate_similarity.ravel().astype(np.float64), np.full(n_images, 2.0 - UNPAIRED_VALUE),
                           np.ones(n_tracks), np.ones(n_images * k)])
    size = n_images + n_tracks
    graph = scipy.sparse.coo_array((costs, (rows, cols)), shape=(size, size)).tocsr()
    matched_rows, matched_cols = min_weight_full_bipartite_matching(graph)
    paired = (matched_rows < n_images) & (matched_cols < n_tracks)
    return matched_rows[paired].astype(np.int64), matched_cols[paired].astype(np.int64)


def greedy_candidate_matching(candidate_tracks: np.ndarray, candidate_similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching over the candidates by descending similarity; (rows, cols)."""
    order = np.argsort(-candidate_similarity, axis=None, kind="stable")
    rows, ranks = np.divmod(order, candidate_tracks.shape[1])
    cols = candidate_tracks[rows, ranks]
    row_taken = np.zeros(len(candidate_tracks), dtype=bool)
    col_taken: set[int] = set()
    chosen_rows, chosen_cols = [], []
    for row, col in zip(rows.tolist(), cols.tolist()):
        if not row_taken[row] and col not in col_taken:
            row_taken[row] = True
            col_taken.add(col)
            chosen_rows.append(row)
            chosen_cols.append(col)
    return np.array(chosen_rows, dtype=np.int64), np.array(chosen_cols, dtype=np.int64)


def sparse_in_fresh_process(n: int) -> dict:
    """The sparse path end to end at n x n, in a fresh process so its peak memory is its own."""
    result = subprocess.run([sys.executable, "-c", MEASURE_CHILD, str(n), str(DIM), str(NOISE)],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def dense_vs_sparse(n: int) -> dict:
    """Both paths on the same n x n problem: seconds, recovery, total similarity, shared pairs."""
    image, audio, truth = planted_embeddings(n, seed=SEED + 1)
    artwork_ids, track_ids = list(range(n)), np.arange(n)
    rows = {}
    for method, params in (("dense", SimilarityParams(min_similarity=-1.0, dense_max=n)),
                           ("sparse", SimilarityParams(min_similarity=-1.0, dense_max=n - 1))):
        result = pair_by_similarity(artwork_ids, image, track_ids, audio, SPACE, SPACE, params)
        artworks = result.pairs["artwork_id"].astype(int).to_numpy()
        rows[method] = {
            "seconds": result.report["seconds"],
            "recovery": float((result.pairs["track_id"].to_numpy() == truth[artworks]).sum() / n),
            "total_similarity": float(result.pairs["similarity"].sum()),
            "pairs": set(zip(artworks.tolist(), result.pairs["track_id"].tolist())),
        }
    dense, sparse = rows["dense"], rows["sparse"]
    return {
        "size": n,
        "dense_seconds": dense["seconds"], "sparse_seconds": sparse["seconds"],
        "dense_vs_sparse_seconds": dense["seconds"] / sparse["seconds"],
        "dense_recovery": dense["recovery"], "sparse_recovery": sparse["recovery"],
        "sparse_vs_dense_total_similarity": sparse["total_similarity"] / dense["total_similarity"],
        "shared_pairs_fraction": len(dense["pairs"] & sparse["pairs"]) / n,
    }


def solver_comparison(n: int, top_k: int, hub_strength: float) -> dict:
    """Auction, exact LAPJVsp and greedy on the same top-k candidate graph: seconds, paired, recovery, total."""
    image, audio, truth = planted_embeddings(n, seed=SEED + 2, hub_strength=hub_strength)
    image_unit, audio_unit = unit_rows(range(n), image, "image"), unit_rows(range(n), audio, "audio")
    candidates, candidate_similarity = top_k_tracks(image_unit, audio_unit, top_k)
    row = {"size": n, "top_k": top_k, "hub_strength": hub_strength,
           "true_track_in_candidates": float((candidates == truth[:, None]).any(axis=1).mean()),
           "top1_recovery": float((candidates[:, 0] == truth).mean())}
    solvers = {
        "auction": lambda: auction_matching(candidates, candidate_similarity, n),
        "lapjvsp": lambda: lapjvsp_matching(candidates, candidate_similarity, n),
        "greedy": lambda: greedy_candidate_matching(candidates, candidate_similarity),
    }
    for name, solve in solvers.items():
        started = time.perf_counter()
        rows, cols = solve()
        row[f"{name}_seconds"] = time.perf_counter() - started
        row[f"{name}_paired"] = len(rows)
        row[f"{name}_recovery"] = float((cols == truth[rows]).sum() / n)
        row[f"{name}_total_similarity"] = float(np.einsum("ij,ij->i", image_unit[rows], audio_unit[cols]).sum())
    row["auction_vs_lapjvsp_seconds"] = row["lapjvsp_seconds"] / row["auction_seconds"]
    return row


def run(quick: bool = False) -> dict:
    n_full, n_dense, n_solver = (10_000, 1_000, 5_000) if quick else (100_000, 3_000, 20_000)
    top_k = SimilarityParams().top_k
    logger.info("pairing bench: sparse at %d x %d in a fresh process", n_full, n_full)
    sparse = sparse_in_fresh_process(n_full)
    logger.info("pairing bench: dense vs sparse at %d, solvers at %d", n_dense, n_solver)
    return {
        "benchmark": "pairing",
        "sparse": {
            "size": n_full, "dim": DIM, "noise": NOISE, "top_k": top_k,
            "seconds": sparse["seconds"], "recovery": sparse["recovery"],
            "peak_rss_mb": sparse["peak_rss_mb"], "baseline_rss_mb": sparse["baseline_rss_mb"],
            "full_matrix_mb": n_full * n_full * 4 / 2**20,
            "report": sparse["report"],
        },
        "dense_vs_sparse": dense_vs_sparse(n_dense),
        "solvers": [solver_comparison(n_solver, top_k, 0.0), solver_comparison(n_solver, top_k, HUB_STRENGTH)],
    }
