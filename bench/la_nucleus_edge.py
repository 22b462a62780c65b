"""The reference's side of a Linear-Alignment divergence, on any device (CPU included).

vLLM and the transformers reference agree token for token on greedy LA except where the winning
aligned token sits at the edge of the plausibility nucleus (the principle stream's top-p set):
there a float32 difference between the engines' kernels moves a token in or out of the set and LA
picks a different, equally valid token. For each ``--at PROMPT:POSITION`` (from a
``vllm_equivalence*`` result) this regenerates the reference, then prints the principle stream's
top tokens at that step: probability under the plausibility temperature, the mass before each,
whether the nucleus keeps it, and its aligned logit.

Usage: python -m bench.la_nucleus_edge --model <hf folder> --at 9:11 --at 10:17 [--device cpu]
"""

from __future__ import annotations

import argparse

import torch

from bench.harness import transformers_engine
from bench.vllm_bench.common import PRINCIPLE, prompts, request
from service.alignment.linear_alignment import LinearAlignmentConfig, combine_logits
from service.engines.chat import with_principle, with_system


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the HF folder the equivalence run used")
    ap.add_argument("--at", action="append", required=True, help="PROMPT:POSITION of a divergence (repeatable)")
    ap.add_argument("--prompts", type=int, default=20, help="prompt count of the equivalence run (default 20)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--strength", type=float, default=3.0, help="LA strength of the run (default 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=10, help="tokens to list per step")
    a = ap.parse_args(argv)
    ref = transformers_engine(a.model, device=a.device, dtype="float32", max_model_len=4096)
    texts = prompts(a.prompts)
    la = LinearAlignmentConfig(PRINCIPLE, strength=a.strength)
    for spot in a.at:
        i, pos = (int(x) for x in spot.split(":"))
        req = request(i, texts[i], a.max_tokens, la)
        out = ref.generate([req])[0]
        prefix = out.token_ids[:pos]

        def last(messages: list[dict[str, str]], prefix: list[int] = prefix) -> torch.Tensor:
            ids = ref.encode_chat(messages) + prefix
            with torch.inference_mode():
                return ref.model(input_ids=torch.tensor([ids], device=ref.device)).logits[0, -1].double().cpu()

        plain = last(with_system(req.messages, ref.default_system))
        princ = last(with_principle(req.messages, la.principle, ref.default_system, la.placement))
        q = torch.softmax(princ / la.plausibility_temperature, -1)
        sq, order = q.sort(descending=True, stable=True)
        before = sq.cumsum(-1) - sq
        aligned = combine_logits(princ[None], plain[None], torch.tensor([la.strength]))[0]
        tok = out.token_ids[pos]
        print(f"\nprompt {i}, step {pos}: the reference picks {tok} {ref.tokenizer.decode([tok])!r} "
              f"(plausibility top_p {la.plausibility_top_p}, temperature {la.plausibility_temperature})")
        print(f"{'rank':>4} {'token':>7}  {'text':16s} {'q':>9} {'mass before':>12} {'kept':>5} {'aligned':>8}")
        for r in range(a.top):
            t = int(order[r])
            print(f"{r:4d} {t:7d}  {ref.tokenizer.decode([t])!r:16s} {float(sq[r]):9.6f} {float(before[r]):12.8f} "
                  f"{str(bool(before[r] < la.plausibility_top_p)):>5} {float(aligned[t]):8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
