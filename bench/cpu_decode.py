"""Decode throughput of the transformers engine: base vs Linear Alignment, batch 1 and batch 4.

    python -m bench.cpu_decode [--model embedded:qwen2.5-coder-0.5b-instruct] [--max-tokens 48]

Greedy decodes of four fixed prompts; for each batch size the table gives tokens/s of each variant
and its ratio to the base model. Writes bench/results/cpu_decode_<device>.json and .md and prints
the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.harness import Provenance, device_label, transformers_engine, write_results
from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.config import EMBEDDED_MODEL, Settings
from service.engines.base import GenerationRequest
from service.engines.transformers.engine import TransformersEngine

PROMPTS = [
    "Write a short story about a dragon who learns to cook.",
    "Explain how a hash map works.",
    "Describe the water cycle for a ten-year-old.",
    "What are the pros and cons of remote work?",
]
VARIANTS: dict[str, LinearAlignmentConfig | None] = {
    "base": None,
    "la_fixed_r3": LinearAlignmentConfig("Answer like a pirate.", strength=3.0),
    "la_adaptive": LinearAlignmentConfig("Answer like a pirate.", adaptive=True),
}


def run(engine: TransformersEngine, la: LinearAlignmentConfig | None, batch: int, max_tokens: int) -> dict:
    # min_tokens is not a knob we expose; a stop-free decode with EOS counted is what users get
    reqs = [GenerationRequest(f"{i}", [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                              SamplingParams(max_tokens=max_tokens), AlignmentSpec(la=la)) for i in range(batch)]
    t0 = time.perf_counter()
    results = engine.generate(reqs)
    wall = time.perf_counter() - t0
    tokens = sum(r.completion_tokens for r in results)
    return {"batch": batch, "tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "mean_ttft_s": round(sum(r.first_token_s for r in results) / len(results), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=EMBEDDED_MODEL, help="HF folder or embedded:NAME (default %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens decoded per request (default %(default)s)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results folder")
    args = ap.parse_args(argv)
    settings = Settings(model=args.model)
    engine = transformers_engine(settings.model, home=settings.home,
                                 default_system=settings.default_system_prompt)
    device = device_label(engine.device)
    engine.generate([GenerationRequest("warm", [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=4))])
    rows = []
    for batch in (1, 4):
        for name, la in VARIANTS.items():
            row = {"variant": name, **run(engine, la, batch, args.max_tokens)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    base = {r["batch"]: r["tokens_per_s"] for r in rows if r["variant"] == "base"}
    for r in rows:
        r["vs_base"] = round(r["tokens_per_s"] / base[r["batch"]], 3)
    prov = Provenance.collect(device)
    meta = {"dtype": str(engine.dtype), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "model": args.model, "max_tokens": args.max_tokens}
    lines = [f"# Decode throughput, transformers engine ({device}, {meta['dtype']}, {meta['threads']} threads)", "",
             f"Model `{args.model}`, greedy, max_tokens={args.max_tokens}. Reproduce: `{prov.command}`.", "",
             "| variant | batch | tokens | wall s | tokens/s | vs base | mean TTFT s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['batch']} | {r['tokens']} | {r['wall_s']} | {r['tokens_per_s']} | "
              f"{r['vs_base']} | {r['mean_ttft_s']} |" for r in rows]
    write_results(args.out, "cpu_decode", {"meta": meta, "rows": rows}, "\n".join(lines) + "\n", prov)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
