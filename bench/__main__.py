"""Run every benchmark and write bench/results/<name>.json."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from pathlib import Path

# name -> module whose `run(quick)` returns the result. Imported only when run: a child process's
# ru_maxrss starts at its parent's peak, so importing torch here would inflate the ingest figures.
BENCHMARKS = {
    "ingest": "bench.ingest",
    "pairing": "bench.pairing",
    "training": "bench.training",
    "memory": "bench.memory",
    "generation": "bench.generation",
    "serving_memory": "bench.serving_memory",
    "prior_quality": "bench.prior_quality",
}
RESULTS = Path("bench/results")


def benchmark(name: str) -> Callable[..., dict]:
    """The `run` function of benchmark `name`."""
    return importlib.import_module(BENCHMARKS[name]).run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the benchmark itself")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        result = benchmark(name)(quick=args.quick)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
