"""Every benchmark runs in quick mode and reports well-formed, sane figures (no speed target is asserted)."""

from __future__ import annotations

import math

import pytest

from bench.__main__ import BENCHMARKS, benchmark

pytestmark = pytest.mark.slow  # each builds data or models and starts processes: about 10-60 s apiece


def positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def assert_goals(result: dict, names: set[str], larger_is_better: bool = True) -> None:
    """Each named goal reports a finite value, its target and whether the value meets it."""
    assert set(result["goals"]) == names
    for goal in result["goals"].values():
        assert positive(goal["value"]) and positive(goal["target"])
        met = goal["value"] >= goal["target"] if larger_is_better else goal["value"] <= goal["target"]
        assert goal["met"] is met


def test_every_benchmark_is_registered_with_a_run_function() -> None:
    assert list(BENCHMARKS) == ["ingest", "pairing", "training", "memory", "generation", "serving_memory",
                               "prior_quality"]
    assert all(callable(benchmark(name)) for name in BENCHMARKS)


def test_ingest_quick() -> None:
    result = benchmark("ingest")(quick=True)
    assert result["benchmark"] == "ingest" and len(result["rows"]) == 3
    for row in result["rows"]:
        assert row["files"] > 0 and row["warm_files_decoded"] == 0  # the warm re-run decodes nothing
        for key in ("raw_decode_files_per_s", "ingest_cold_files_per_s", "ingest_warm_files_per_s",
                    "cold_vs_raw_decode", "warm_vs_cold", "peak_rss_mb"):
            assert positive(row[key]), key
    assert [row["files"] for row in result["rows"]] == sorted(row["files"] for row in result["rows"])
    assert positive(result["peak_rss_largest_vs_smallest"]) and result["files_largest_vs_smallest"] > 1


def test_pairing_quick() -> None:
    result = benchmark("pairing")(quick=True)
    sparse = result["sparse"]
    assert result["benchmark"] == "pairing" and sparse["size"] == 10_000
    assert positive(sparse["seconds"]) and 0 < sparse["recovery"] <= 1
    assert sparse["peak_rss_mb"] >= sparse["baseline_rss_mb"] > 0
    comparison = result["dense_vs_sparse"]
    assert positive(comparison["dense_vs_sparse_seconds"]) and positive(comparison["sparse_vs_dense_total_similarity"])
    assert 0 <= comparison["shared_pairs_fraction"] <= 1
    for row in result["solvers"]:
        for solver in ("auction", "lapjvsp", "greedy"):
            assert 0 < row[f"{solver}_paired"] <= row["size"] and 0 <= row[f"{solver}_recovery"] <= 1
            assert positive(row[f"{solver}_seconds"])
        assert positive(row["auction_vs_lapjvsp_seconds"])


def test_training_quick() -> None:
    result = benchmark("training")(quick=True)
    assert result["benchmark"] == "training" and result["steps_timed"] >= 1
    for path in ("cached", "encoding"):
        summary = result[path]
        parts = summary["parts_seconds_per_step"]
        assert set(parts) == {"gather", "forward", "backward", "optimizer"}
        assert all(positive(seconds) for seconds in parts.values())
        assert math.isclose(sum(parts.values()), summary["seconds_per_step"])
        assert math.isclose(summary["steps_per_s"] * summary["seconds_per_step"], 1.0)
    assert positive(result["precompute_seconds"]) and positive(result["cached_vs_encoding_speedup"])
    assert 0 < result["cached_model_fraction"] < 1
    assert_goals(result, {"cached_vs_encoding_speedup", "cached_model_fraction"})


def test_memory_quick() -> None:
    result = benchmark("memory")(quick=True)
    sizes = result["sizes"]
    assert result["benchmark"] == "memory" and sizes == sorted(sizes) and len(sizes) >= 2
    for stage, per_item in (("features", 2), ("latents", 1)):  # features embeds an artwork and a track per pair
        rows = result["stages"][stage]["rows"]
        assert [row["size"] for row in rows] == sizes
        assert [row["items"] for row in rows] == [per_item * n for n in sizes]  # each child did its size's work
        for row in rows:
            assert positive(row["seconds"]) and row["peak_rss_mb"] >= row["baseline_rss_mb"] > 0
        assert positive(result["stages"][stage]["peak_largest_vs_smallest"])
        assert math.isfinite(result["stages"][stage]["peak_growth_mb_per_1000_pairs"])
    training = result["training"]
    rows = training["rows"]
    assert [row["pairs"] for row in rows] == [row["size"] for row in rows] and rows[-1]["size"] == 10 * rows[0]["size"]
    for row in rows:
        assert row["steps"] >= 1 and positive(row["seconds"])
        # Anonymous memory only: the memory-mapped shards' pages count in RSS, not in RssAnon.
        assert row["peak_rss_anon_mb"] >= row["baseline_rss_anon_mb"] > 0 and positive(row["rss_file_mb"])
        assert row["peak_rss_mb"] >= row["peak_rss_anon_mb"]
    assert positive(training["rss_anon_peak_largest_vs_smallest"]) and positive(training["cached_mb_largest"])
    assert math.isfinite(training["rss_anon_growth_mb_per_1000_pairs"])
    assert_goals(result, {"features_peak_flat", "latents_peak_flat", "training_rss_anon_flat"}, larger_is_better=False)


def test_generation_quick() -> None:
    result = benchmark("generation")(quick=True)
    assert result["benchmark"] == "generation" and result["waves_ok"] is True
    assert result["ddim"]["steps"] == 8 * result["dpmsolver++"]["steps"]
    assert positive(result["dpmsolver++"]["seconds"]) and positive(result["ddim"]["seconds"])
    assert positive(result["dpmsolver_vs_ddim_speedup"]) and result["step_ratio"] == 8
    assert positive(result["seconds_outside_loop"])
    assert all(math.isfinite(result[name]["seconds_per_step"]) for name in ("dpmsolver++", "ddim"))
    assert_goals(result, {"dpmsolver_vs_ddim_speedup"})


def test_serving_memory_quick() -> None:
    result = benchmark("serving_memory")(quick=True)
    assert result["benchmark"] == "serving_memory" and result["hostile_requests"] == 4
    assert result["hostile_answers"] == {"400": 4}  # every hostile request refused
    assert positive(result["rss_after_benign_mb"]) and positive(result["rss_after_hostile_mb"])
    assert_goals(result, {"rss_after_hostile_mb"}, larger_is_better=False)


def test_prior_quality_quick() -> None:
    result = benchmark("prior_quality")(quick=True)
    assert result["benchmark"] == "prior_quality" and result["train_tracks"] > result["held_out_tracks"] > 0
    (point,) = result["points"]
    assert positive(point["train_seconds"]) and point["unet_parameters"] > 0
    for row in (*point["oracle"].values(), point["floor"]):
        assert set(row["planted"]) == {"register", "notes_per_second", "timbre"}
        assert all(0 <= row["planted_low"][f] <= row["planted"][f] <= 1 for f in row["planted"])
        assert positive(row["fad_spectral"])
    assert list(point["oracle"]) == ["guidance_3.5"]  # quick: the evaluation's guidance only
    for found in point["goals"].values():  # the oracle's accuracy against the references', per factor
        assert found["target"] == 0.8 and found["met"] is (found["value"] >= 0.8)
