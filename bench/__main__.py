"""Run every benchmark and write bench/results/<name>.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import ingest as ingest_bench
from bench import pairing as pairing_bench

BENCHMARKS = {"ingest": ingest_bench.run, "pairing": pairing_bench.run}
RESULTS = Path("bench/results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the benchmark itself")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        result = BENCHMARKS[name](quick=args.quick)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
