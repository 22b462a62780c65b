"""Sampled decoding (temperature > 0) on the transformers engine on a GPU: plain and Linear Alignment.

Checks what CPU tests cannot: the per-row generators live on the logits' device (a CPU generator
on CUDA logits raised "Expected a 'cuda' device type for generator"), and a seeded request decodes
the same tokens twice, alone or in a batch with others. Writes ``<out>.json``/``.md``.

Usage (GPU host): python -m bench.cuda_sampling --model /tmp/rand-0.5b --out bench/results/cuda_sampling
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.harness import Provenance, device_label, write_files
from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.engines.base import GenerationRequest
from service.engines.transformers.engine import TransformersEngine


def _req(i: int, la: bool, seed: int | None) -> GenerationRequest:
    align = AlignmentSpec(la=LinearAlignmentConfig("Answer in one short sentence.")) if la else AlignmentSpec()
    return GenerationRequest(f"r{i}", [{"role": "user", "content": f"Tell me about the number {i}."}],
                             SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, top_k=50, seed=seed), align)


def run(model: str, device: str) -> dict[str, Any]:
    eng = TransformersEngine(model, device=device, dtype="bfloat16", max_model_len=512)
    rows: dict[str, Any] = {}
    for la in (False, True):
        name = "la" if la else "plain"
        alone = eng.generate([_req(0, la, seed=7)])[0].token_ids
        again = eng.generate([_req(0, la, seed=7)])[0].token_ids
        batch = eng.generate([_req(0, la, seed=7)] + [_req(i, la, seed=None) for i in range(1, 4)])[0].token_ids
        unseeded = [r.token_ids for r in eng.generate([_req(0, la, seed=None), _req(0, la, seed=None)])]
        rows[name] = {"ok": True, "tokens": len(alone), "seeded_repeat_equal": alone == again,
                      "seeded_equal_in_batch": alone == batch, "unseeded_differ": unseeded[0] != unseeded[1]}
    eng.close()
    return {"model": model, "engine_device": str(eng.device), "rows": rows}


def markdown(res: dict[str, Any], prov: Provenance) -> str:
    lines = [f"# Sampling on the transformers engine on {prov.device}", "",
             f"Model `{res['model']}` on `{res['engine_device']}`, bfloat16, temperature 0.8, top-p 0.9, top-k 50, "
             "24 tokens.", "", "| request | decoded | seeded twice equal | seeded equal inside a batch of 4 | "
             "two unseeded differ |", "|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        lines.append(f"| {name} | {r['tokens']} tokens | {r['seeded_repeat_equal']} | {r['seeded_equal_in_batch']} | "
                     f"{r['unseeded_differ']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF folder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True, help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    res = run(args.model, args.device)
    prov = Provenance.collect(device_label(args.device))
    md = markdown(res, prov)
    print(md)
    write_files(args.out, res, md, prov)
    return 0 if all(r["seeded_repeat_equal"] and r["seeded_equal_in_batch"] for r in res["rows"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
