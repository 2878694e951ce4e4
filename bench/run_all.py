"""Run every benchmark in turn, each in its own process (so none inherits another's memory).

    python -m bench.run_all [--quick | --smoke] [--only overhead,growth] [--skip default_run]

Options meant for all of them (--results, --tracking-uri, --work-dir, --no-mlflow) are passed
on. A benchmark that fails is reported and the others still run; the exit status is the number
of failures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench import common

# In the order of bench/RESULTS.md (names are BENCHMARKS keys; see common.module).
ORDER = ["overhead", "search", "startup", "default_run", "growth", "throughput",
         "kept_models"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--quick", dest="mode", action="store_const", const="quick")
    modes.add_argument("--smoke", dest="mode", action="store_const", const="smoke")
    p.add_argument("--only", help=f"comma-separated, from: {', '.join(ORDER)}")
    p.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    p.add_argument("--results")
    p.add_argument("--tracking-uri")
    p.add_argument("--work-dir")
    p.add_argument("--no-mlflow", action="store_true")
    args = p.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",")] if args.only else ORDER
    unknown = sorted(set(chosen) - set(ORDER))
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}")
    skipped = {n.strip() for n in args.skip.split(",") if n.strip()}
    shared = [f"--{args.mode}"] if args.mode else []
    for flag in ("results", "tracking_uri", "work_dir"):
        if getattr(args, flag):
            shared += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    if args.no_mlflow:
        shared.append("--no-mlflow")

    failed = []
    for name in (n for n in chosen if n not in skipped):
        command = [sys.executable, "-m", f"bench.{common.module(name)}", *shared]
        print(f"\n### {common.command(name, shared)}", flush=True)
        started = time.monotonic()
        code = subprocess.run(command, cwd=common.REPO).returncode
        print(f"### {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
