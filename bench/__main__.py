"""`make bench`: run every benchmark module and write bench/results.json and bench/results.md.

A benchmark is a module `bench/bench_<name>.py` with `run() -> dict[str, float]`; its keys are
dotted (`upload.agent_vs_smpclient`). Each runs in its own process so one benchmark's memory and
threads cannot skew another's figures; a failing benchmark is reported and the others still run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "results.md"
TIMEOUT_S = 600
TIMEOUTS_S = {"bench_system": 2400}
"""Modules that need longer (bench_system: two fleets, each phase up to its own timeout)."""


def run_one(module: str) -> dict[str, float]:
    """Run `bench.<module>` in a fresh interpreter and return its figures."""
    code = f"import json, bench.{module} as b; print(json.dumps(b.run()))"
    started = time.monotonic()
    timeout_s = TIMEOUTS_S.get(module, TIMEOUT_S)
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"bench {module} ran past {timeout_s} s and was stopped\n")
        return {}
    if result.returncode != 0:
        sys.stderr.write(f"bench {module} failed:\n{result.stderr[-4000:]}\n")
        return {}
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{module}: {len(figures)} figures in {time.monotonic() - started:.1f} s", flush=True)
    return figures


def _kept_by_full_run(key: str) -> bool:
    """Figures of `make bench-system` (the 100k fleet), which a full `make bench` does not measure."""
    return key.startswith("controller.system_") and "100k" in key


def write_results(results: dict[str, float], *, merge: bool) -> None:
    """Write results.json and results.md; `merge` keeps the figures of benchmarks not run now."""
    previous = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    previous = previous if merge else {k: v for k, v in previous.items() if _kept_by_full_run(k)}
    merged = {**previous, **results}
    RESULTS_JSON.write_text(json.dumps(dict(sorted(merged.items())), indent=2) + "\n")
    lines = ["| key | value |", "|---|---|", *(f"| `{k}` | {v:.4g} |" for k, v in sorted(merged.items()))]
    RESULTS_MD.write_text("# Benchmark results\n\nWritten by `make bench`.\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    """Run the benchmarks named in `argv` (default: all) and write the report."""
    modules = sorted(path.stem for path in BENCH_DIR.glob("bench_*.py"))
    selected = [m for m in modules if not argv or any(name in m for name in argv)]
    results: dict[str, float] = {}
    failed = []
    for module in selected:
        figures = run_one(module)
        if not figures:
            failed.append(module)
        results.update(figures)
    write_results(results, merge=bool(argv))
    for key, value in sorted(results.items()):
        print(f"{key:45s} {value:.4g}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
