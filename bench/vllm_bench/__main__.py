"""python -m bench.vllm_bench SUITE [PHASE ...] [options]: the GPU benchmarks of the vLLM engine.

Suites and phases (``python -m bench.vllm_bench SUITE --help`` for each one's options):
{listing}

Run on a GPU host with vLLM installed (``bench/gpu/setup_vllm_host.sh``), from the repository root:

    PYTHONPATH=$PWD:/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 python3 -m bench.vllm_bench gpu equivalence stress \\
        --model /tmp/ahome/models/qwen2.5-coder-0.5b-instruct/hf --out bench/results

Results go to ``--out`` (default bench/results) as ``<stem>_<device>.json`` and ``.md``, each with
the device, the command, the date and the git revision.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import RESULTS
from .registry import SUITES


def listing() -> str:
    lines = []
    for suite in SUITES.values():
        lines.append(f"  {suite.name}: {suite.help} (default phases: {' '.join(suite.default)})")
        lines += [f"    {name:17s} {text}" for name, text in suite.phases.items()]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.vllm_bench", description=__doc__.format(listing=listing()),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for suite in SUITES.values():
        names = ", ".join(suite.phases)
        sp = sub.add_parser(suite.name, help=suite.help, description=f"{suite.help}. Phases:\n" + "\n".join(
            f"  {n:17s} {t}" for n, t in suite.phases.items()) + f"\nResults: {', '.join(suite.results)}",
            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("phases", nargs="*", metavar="PHASE",
                        help=f"phases to run, in order ({names}; default: {' '.join(suite.default)})")
        sp.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
        suite.add_args(sp)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    suite = SUITES[args.suite]
    phases = args.phases or list(suite.default)
    unknown = [p for p in phases if p not in suite.phases]
    if unknown:
        ap.error(f"suite {suite.name} has no phase {', '.join(unknown)}; its phases: {', '.join(suite.phases)}")
    return suite.runner()(args, phases)


if __name__ == "__main__":
    raise SystemExit(main())
