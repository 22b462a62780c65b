"""The vLLM engine on the GPU against the transformers reference: equivalence, stress, throughput.

Phases (each writes ``vllm_<phase>_<device>.json`` and ``.md``):
- ``equivalence`` / ``equivalence_fp32``: greedy outputs of vLLM and the transformers engine
  (bf16 / float32) for base, LA, steering and LA+steering; first divergences with the reference's
  logit gap there (``vllm_equivalence_float32_*`` for the float32 run).
- ``stress``: many LA requests at once on a small KV cache (preemption), strict pair checking.
- ``throughput``: tokens/s, TTFT, ITL of stock vLLM, the glue engine (plain, LA, steering, both)
  and the transformers engine, per concurrency level.
- ``interleaved``: the headline ratios with drift removed (three engines share the GPU, workloads
  alternate for several rounds).
- ``breakdown``: where the glue's throughput goes (engines differing in one thing at a time).
- ``profile``: py-spy samples of the engine core and the API process with GPU utilisation, stock
  vLLM and the glue engine's plain / LA / steering workloads (``profile.py``, ``pyspy.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.harness import free_gpu, transformers_engine, vllm_engine
from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.nucleus_threshold import ENV as NUCLEUS_ENV
from service.alignment.spec import SteeringVector
from service.engines.base import GenerationRequest, GenerationResult
from service.engines.transformers.engine import TransformersEngine

from .common import CUDAGRAPH_SIZES, PRINCIPLE, device_name, model_label, prompts, request, steering_vectors, write

PHASES = {
    "equivalence": "greedy vLLM vs transformers reference, bfloat16",
    "equivalence_fp32": "the same in float32",
    "stress": "LA requests at once on a small KV cache (preemption), strict pair checks",
    "throughput": "tok/s, TTFT, ITL: stock vLLM, glue engine variants, transformers engine",
    "interleaved": "headline ratios, three engines alternating on one GPU",
    "breakdown": "throughput of engines that differ in one thing at a time",
    "profile": "py-spy of the engine core and API process + GPU utilisation, stock vs glue workloads",
}
DEFAULT = ("equivalence", "stress", "throughput")
STOCK_2C = "stock vLLM (async) @2C"
DISTINCT = "glue: 64 distinct steering specs"
SYNC_PLAIN, SYNC_LA = "glue, sync pairing: plain", "glue, sync pairing: LA"


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="HF model folder (Qwen2 family for steering)")
    ap.add_argument("--prompts", type=int, default=20, help="equivalence: prompts (default %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=48, help="equivalence: tokens per prompt (default %(default)s)")
    ap.add_argument("--stress-requests", type=int, default=200, help="stress: requests (default %(default)s)")
    ap.add_argument("--stress-blocks", type=int, default=256, help="stress: KV blocks of 16 tokens (default 256)")
    ap.add_argument("--levels", default="1,8,64", help="throughput: concurrency levels (default %(default)s)")
    ap.add_argument("--breakdown-levels", default="8,64", help="breakdown: concurrency levels (default %(default)s)")
    ap.add_argument("--il-concurrency", type=int, default=64, help="interleaved: concurrency (default %(default)s)")
    ap.add_argument("--il-rounds", type=int, default=3, help="interleaved: rounds after warm-up (default 3)")
    ap.add_argument("--il-requests", type=int, default=768, help="interleaved: requests per run (default 768)")
    ap.add_argument("--il-gpu-mem", type=float, default=0.28,
                    help="interleaved: GPU memory share of each of the three engines (default %(default)s)")
    ap.add_argument("--il-pairing", choices=["sync", "async"], default="async",
                    help="interleaved: the glue engine's LA pairing mode (default %(default)s)")
    ap.add_argument("--il-no-steer-only", action="store_true",
                    help="interleaved: leave out the steering-only engine (two engines: room for a 7B shape)")
    ap.add_argument("--il-compare-sync", action="store_true",
                    help="interleaved, with --il-pairing async: add a glue engine with sync pairing (plain, LA)")
    ap.add_argument("--il-compare-sort", action="store_true",
                    help="interleaved: also LA on a glue engine with the full-sort nucleus (kernel off)")
    ap.add_argument("--il-no-distinct", action="store_true",
                    help="interleaved: leave out the 64-distinct-steering-specs workload")
    ap.add_argument("--il-ttft-concurrency", type=int, default=8,
                    help="interleaved: concurrency of the TTFT workloads, stock and LA (0: none; default 8)")
    ap.add_argument("--profile-s", type=float, default=8.0, help="profile: py-spy seconds per workload (default 8)")
    ap.add_argument("--profile-concurrency", type=int, default=64, help="profile: concurrency (default 64)")
    ap.add_argument("--tp-tokens", type=int, default=128,
                    help="throughput/interleaved/breakdown: output tokens per request (default %(default)s)")


def run(args: argparse.Namespace, phases: list[str]) -> int:
    levels = [int(x) for x in args.levels.split(",")]
    for phase in phases:
        if phase == "equivalence":
            equivalence(args.model, args.out, args.prompts, args.max_tokens)
        elif phase == "equivalence_fp32":
            equivalence(args.model, args.out, args.prompts, args.max_tokens, dtype="float32")
        elif phase == "stress":
            stress(args.model, args.out, args.stress_requests, args.stress_blocks)
        elif phase == "throughput":
            throughput(args.model, args.out, levels, args.tp_tokens)
        elif phase == "interleaved":
            interleaved(args.model, args.out, args.il_concurrency, args.tp_tokens, args.il_rounds, args.il_requests,
                        args.il_gpu_mem, args.il_pairing, not args.il_no_steer_only, not args.il_no_distinct,
                        args.il_ttft_concurrency, args.il_compare_sync, args.il_compare_sort)
        elif phase == "profile":
            from .profile import profile
            profile(args.model, args.out, args.profile_concurrency, args.tp_tokens, args.profile_s)
        elif phase == "breakdown":
            breakdown(args.model, args.out, [int(x) for x in args.breakdown_levels.split(",")], args.tp_tokens)
    return 0


# ---- equivalence ------------------------------------------------------------------------------
def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def margin_at(ref: TransformersEngine, req: GenerationRequest, prefix: list[int], tok_ref: int,
              tok_other: int) -> dict[str, Any]:
    """At a divergence: the reference's logit gap between its token and the other engine's
    (principle/plain streams for LA are combined the same way the engine does), and for LA where
    the gap is infinite, where the other token sits against the plausibility nucleus' edge."""
    from service.alignment.linear_alignment import linear_alignment_step
    from service.engines.chat import with_principle, with_system
    from service.engines.transformers.hooks import SteeringHooks

    def last_logits(messages: list[dict[str, str]]) -> torch.Tensor:
        ids = ref.encode_chat(messages) + prefix
        x = torch.tensor([ids], device=ref.device)
        hooks = SteeringHooks(ref.model, [req.alignment.steering], ref.head_dim, ref.dtype, ref.device)
        with torch.inference_mode(), hooks:
            if prefix:  # the prompt's last token is steered in the prefill, generated tokens after
                hooks.phase = "prefill"
                out = ref.model(input_ids=x[:, : len(ids) - len(prefix)], use_cache=True)
                hooks.phase = "decode"
                out = ref.model(input_ids=x[:, len(ids) - len(prefix):], past_key_values=out.past_key_values)
            else:
                out = ref.model(input_ids=x)
        return out.logits[0, -1].float()

    plain = last_logits(with_system(req.messages, ref.default_system))
    la = req.alignment.la
    if la is None:
        return {"ref_logit_gap": float(plain[tok_ref] - plain[tok_other])}
    princ = last_logits(with_principle(req.messages, la.principle, ref.default_system, la.placement))
    row = linear_alignment_step(princ[None], plain[None], [la]).logits[0]
    detail: dict[str, Any] = {"ref_logit_gap": float(row[tok_ref] - row[tok_other])}
    if not math.isfinite(detail["ref_logit_gap"]):
        detail["nucleus"] = nucleus_edge(princ, la.plausibility_top_p, la.plausibility_temperature, tok_other)
    return detail


def nucleus_edge(l_in: torch.Tensor, top_p: float, temperature: float, tok: int) -> dict[str, Any]:
    """Where ``tok`` sits in LA's plausibility nucleus of the principle stream ``l_in`` (float64):
    its rank, probability and the mass before it, and the probabilities of the last token kept and
    the first left out. A token just outside (mass before a hair above ``top_p``, or a probability
    within a hair of the last kept one, so that the two swap) is a near-tie at the nucleus' edge,
    where a float32 difference between two engines flips which token LA may pick."""
    q = torch.softmax(l_in.double() / temperature, dim=-1)
    sq, order = q.sort(descending=True, stable=True)
    before = sq.cumsum(-1) - sq
    kept = int((before < top_p).sum())
    rank = int((order == tok).nonzero()[0, 0])
    return {"token": tok, "rank": rank, "q": float(q[tok]), "mass_before": float(before[rank]), "top_p": top_p,
            "kept_in_ref": rank < kept, "last_kept_q": float(sq[kept - 1]),
            "first_out_q": float(sq[kept]) if kept < len(sq) else None}


def fmt_divergences(divs: list[dict[str, Any]]) -> str:
    """``position: gap`` per divergence; LA's nucleus-edge cases spelled out."""
    parts = []
    for d in divs:
        gap, edge = d.get("ref_logit_gap"), d.get("nucleus")
        if gap is None:
            parts.append(f"{d['position']}: length")
        elif edge is not None:
            parts.append(f"{d['position']}: nucleus edge (rank {edge['rank']}, mass before {edge['mass_before']:.4f} "
                         f"vs top_p {edge['top_p']:g}; q {edge['q']:.5f} vs last kept {edge['last_kept_q']:.5f})")
        else:
            parts.append(f"{d['position']}: {gap:.3f}")
    return ", ".join(parts) or "—"


def equivalence(model: str, out: Path, n_prompts: int, max_tokens: int, dtype: str = "bfloat16") -> dict[str, Any]:
    texts = prompts(n_prompts)
    ref = transformers_engine(model, device="cuda", dtype=dtype, max_model_len=4096)
    steer = steering_vectors(ref.model.config.hidden_size, ref.head_dim)
    la = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    variants = {"base": (None, ()), "la_r3": (la, ()), "steering": (None, steer), "la_r3+steering": (la, steer)}
    ref_out: dict[str, list[GenerationResult]] = {}
    t0 = time.perf_counter()
    for name, (v_la, v_steer) in variants.items():  # batch of one: no padding in the reference
        ref_out[name] = [ref.generate([request(i, t, max_tokens, v_la, v_steer)])[0] for i, t in enumerate(texts)]
    print(f"reference done in {time.perf_counter() - t0:.0f}s", flush=True)
    eng = vllm_engine(model, max_model_len=4096, gpu_memory_utilization=0.5, dtype=dtype,
                      cudagraph_sizes=CUDAGRAPH_SIZES, strict_pairs=True)
    rows: list[dict[str, Any]] = []
    for name, (v_la, v_steer) in variants.items():
        got = eng.generate([request(i, t, max_tokens, v_la, v_steer) for i, t in enumerate(texts)])
        exact, matched, total, divs = 0, 0, 0, []
        for i, (r, g) in enumerate(zip(ref_out[name], got, strict=True)):
            d = first_divergence(r.token_ids, g.token_ids)
            n = max(len(r.token_ids), len(g.token_ids))
            total += n
            if d is None:
                exact += 1
                matched += n
                continue
            matched += d
            at: dict[str, Any] = {"ref_logit_gap": None}
            if d < min(len(r.token_ids), len(g.token_ids)):
                at = margin_at(ref, request(i, texts[i], max_tokens, v_la, v_steer), r.token_ids[:d],
                               r.token_ids[d], g.token_ids[d])
            divs.append({"prompt": i, "position": d, **at})
        changed = sum(a.token_ids != b.token_ids for a, b in zip(ref_out[name], ref_out["base"], strict=True))
        rows.append({"variant": name, "prompts": len(texts), "identical": exact,
                     "token_match_rate": matched / max(total, 1), "divergences": divs,
                     "outputs_changed_vs_base_in_reference": changed})
    eng.close()
    del ref
    free_gpu()
    md = [f"# vLLM vs transformers reference — greedy, {dtype}, {len(texts)} prompts, {max_tokens} tokens\n",
          f"Device: {device_name()}. Token match = matched tokens before the first divergence / tokens. "
          "Gap = the reference's logit difference between its token and vLLM's at the first divergence "
          "(small = a bf16 near-tie); for LA an infinite gap means vLLM's token is outside the reference's "
          "plausibility nucleus, shown as where it sits against the nucleus' edge.\n",
          "| variant | identical | token match | first divergences (position: gap) | changed vs base (ref) |",
          "|---|---|---|---|---|"]
    for row in rows:
        dv = fmt_divergences(row["divergences"])
        md.append(f"| {row['variant']} | {row['identical']}/{row['prompts']} | {row['token_match_rate']:.3f} | "
                  f"{dv} | {row['outputs_changed_vs_base_in_reference']} |")
    payload = {"dtype": dtype, "max_tokens": max_tokens, "rows": rows}
    suffix = "" if dtype == "bfloat16" else f"_{dtype}"
    write(out, f"vllm_equivalence{suffix}", payload, "\n".join(md) + "\n")
    return payload


# ---- stress -----------------------------------------------------------------------------------
def stress(model: str, out: Path, n: int, blocks: int) -> dict[str, Any]:
    rng = random.Random(0)
    texts = prompts(60)
    eng = vllm_engine(model, max_model_len=2048, gpu_memory_utilization=0.5, num_gpu_blocks=blocks,
                      max_num_batched_tokens=512, cudagraph_sizes=CUDAGRAPH_SIZES, strict_pairs=True)
    reqs = []
    for i in range(n):
        body = " ".join(rng.sample(texts, rng.randrange(1, 6)))
        la = LinearAlignmentConfig(PRINCIPLE, strength=rng.choice([1.0, 3.0]), adaptive=rng.random() < 0.3)
        reqs.append(request(i, body, rng.randrange(16, 400), la, ignore_eos=rng.random() < 0.5))
    t0 = time.perf_counter()
    results = eng.call(asyncio.wait_for(_gather(eng, reqs), timeout=540))
    wall = time.perf_counter() - t0
    failures = [r for r in results if isinstance(r, BaseException)]
    done = [r for r in results if isinstance(r, GenerationResult)]
    preempt = _prom_total("vllm:num_preemptions")
    eng.close()
    free_gpu()
    payload = {"requests": n, "kv_blocks": blocks, "block_tokens": 16,
               "completed": len(done), "failed": len(failures), "errors": [repr(e) for e in failures[:5]],
               "tokens": sum(r.completion_tokens for r in done), "wall_s": wall, "preemptions": preempt}
    md = (f"# LA stress run — {n} Linear-Alignment requests at once, KV cache of {blocks} blocks x 16 tokens\n\n"
          f"Device: {device_name()}. Strict pair checking on (the scheduler raises if a pair ever differs "
          f"in output length or last token); every result also compared against its partner stream.\n\n"
          f"| completed | failed | generated tokens | wall s | preemptions |\n|---|---|---|---|---|\n"
          f"| {len(done)} | {len(failures)} | {payload['tokens']} | {wall:.1f} | {preempt} |\n")
    write(out, "vllm_stress", payload, md)
    return payload


async def _gather(eng: Any, reqs: list[GenerationRequest]) -> list[Any]:
    return list(await asyncio.gather(*(eng.agenerate(r) for r in reqs), return_exceptions=True))


def _prom_total(name: str) -> float | None:
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        return None
    total, seen = 0.0, False
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name.startswith(name) and s.name.endswith("_total"):
                total += s.value
                seen = True
    return total if seen else None


# ---- throughput -------------------------------------------------------------------------------
def _stats(token_times: list[list[float]], submits: list[float], wall: float) -> dict[str, float]:
    ttft = [t[0] - s for t, s in zip(token_times, submits, strict=True) if t]
    itl = [b - a for t in token_times for a, b in zip(t, t[1:], strict=False)]
    tokens = sum(len(t) for t in token_times)

    def pct(xs: list[float], q: float) -> float:
        return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) >= 2 else (xs[0] if xs else float("nan"))

    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "ttft_p50_ms": pct(ttft, 50) * 1e3,
            "ttft_p99_ms": pct(ttft, 99) * 1e3, "itl_p50_ms": pct(itl, 50) * 1e3, "itl_p99_ms": pct(itl, 99) * 1e3}


async def _vllm_level(eng: Any, make: Any, conc: int, n: int) -> dict[str, float]:
    sem = asyncio.Semaphore(conc)
    times: list[list[float]] = [[] for _ in range(n)]
    submits = [0.0] * n

    async def one(i: int) -> None:
        async with sem:
            submits[i] = time.perf_counter()
            await eng.agenerate(make(i, lambda ev, i=i: times[i].append(time.perf_counter())))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return _stats(times, submits, time.perf_counter() - t0)


def _ref_level(ref: TransformersEngine, make: Any, conc: int, n: int) -> dict[str, float]:
    times: list[list[float]] = [[] for _ in range(n)]
    submits = [0.0] * n
    t0 = time.perf_counter()
    for start in range(0, n, conc):
        batch = []
        for i in range(start, min(n, start + conc)):
            submits[i] = time.perf_counter()
            batch.append(make(i, lambda ev, i=i: times[i].append(time.perf_counter())))
        ref.generate(batch)
    return _stats(times, submits, time.perf_counter() - t0)


def throughput(model: str, out: Path, levels: list[int], max_tokens: int) -> dict[str, Any]:
    texts = prompts(40)
    la = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    rows: list[dict[str, Any]] = []

    def maker(v_la: Any, v_steer: Any) -> Any:
        def make(i: int, cb: Any) -> GenerationRequest:
            return request(i, texts[i % len(texts)], max_tokens, v_la, v_steer, ignore_eos=True,
                           on_token=lambda ev: cb(ev))
        return make

    def n_for(c: int) -> int:
        return max(4, 2 * c)

    def record(system: str, c: int, s: dict[str, float]) -> None:
        rows.append({"system": system, "concurrency": c, **s})
        print(f"{system:24s} c={c:3d} {s['tok_s']:9.1f} tok/s ttft p50 {s['ttft_p50_ms']:7.1f} ms "
              f"itl p50 {s['itl_p50_ms']:6.2f} ms", flush=True)

    stock = vllm_engine(model, glue=False, gpu_memory_utilization=0.5, cudagraph_sizes=CUDAGRAPH_SIZES)
    for c in levels:
        stock.call(_vllm_level(stock, maker(None, ()), c, min(8, n_for(c))))  # warm-up
        record("vllm (stock, async sched)", c, stock.call(_vllm_level(stock, maker(None, ()), c, n_for(c))))
    stock.close()
    free_gpu()
    eng = vllm_engine(model, gpu_memory_utilization=0.5, cudagraph_sizes=CUDAGRAPH_SIZES)
    steer = steering_vectors(896 if eng.num_heads * eng.head_dim == 896 else eng.num_heads * eng.head_dim, eng.head_dim)
    for system, v_la, v_steer in (("vllm+glue plain", None, ()), ("vllm+LA", la, ()),
                                  ("vllm+steering", None, steer), ("vllm+LA+steering", la, steer)):
        for c in levels:
            eng.call(_vllm_level(eng, maker(v_la, v_steer), c, min(8, n_for(c))))
            record(system, c, eng.call(_vllm_level(eng, maker(v_la, v_steer), c, n_for(c))))
    eng.close()
    free_gpu()
    ref = transformers_engine(model, device="cuda", dtype="bfloat16", max_model_len=4096)
    for system, v_la in (("transformers", None), ("transformers+LA", la)):
        for c in levels:
            _ref_level(ref, maker(v_la, ()), c, min(2, n_for(c)))
            record(system, c, _ref_level(ref, maker(v_la, ()), c, n_for(c)))
    by = {(r["system"], r["concurrency"]): r["tok_s"] for r in rows}
    top = max(levels)
    ratios = {
        "LA / stock vLLM": by[("vllm+LA", top)] / by[("vllm (stock, async sched)", top)],
        "steering / stock vLLM": by[("vllm+steering", top)] / by[("vllm (stock, async sched)", top)],
        "steering / glue plain": by[("vllm+steering", top)] / by[("vllm+glue plain", top)],
        "LA / glue plain": by[("vllm+LA", top)] / by[("vllm+glue plain", top)],
        "vLLM LA / transformers LA": by[("vllm+LA", top)] / by[("transformers+LA", top)],
        "vLLM steering / transformers": by[("vllm+steering", top)] / by[("transformers", top)],
    }
    md = [f"# Throughput — {device_name()}, Qwen2.5-Coder-0.5B-Instruct bf16, {max_tokens} output tokens "
          "per request (EOS ignored), 2x concurrency requests per level\n",
          "| system | concurrency | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['system']} | {r['concurrency']} | {r['tok_s']:.0f} | {r['ttft_p50_ms']:.1f} | "
                  f"{r['ttft_p99_ms']:.1f} | {r['itl_p50_ms']:.2f} | {r['itl_p99_ms']:.2f} |")
    md.append(f"\nRatios at concurrency {top} (same run):\n")
    md += [f"- {k}: **{v:.2f}x**" for k, v in ratios.items()]
    payload = {"max_tokens": max_tokens, "rows": rows, "ratios": ratios}
    write(out, "vllm_throughput", payload, "\n".join(md) + "\n")
    return payload


def breakdown(model: str, out: Path, levels: list[int], max_tokens: int) -> dict[str, Any]:
    """Where the glue engine's throughput goes: the same plain requests on engines that differ in
    one thing at a time (async scheduling; the steerable architecture; the LA pairing)."""
    texts = prompts(40)
    la = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    rows: list[dict[str, Any]] = []
    common: dict[str, Any] = {"gpu_memory_utilization": 0.5, "cudagraph_sizes": CUDAGRAPH_SIZES}
    engines: list[tuple[str, dict[str, Any], list[tuple[str, Any, bool]]]] = [  # name, VLLMSettings, workloads
        ("stock, async", {"glue": False}, [("plain", None, False)]),
        ("stock, sync", {"glue": False, "async_scheduling": False}, [("plain", None, False)]),
        ("steerable arch, async, no pairing", {"pairing": False},
         [("plain", None, False), ("steering", None, True)]),
        ("steerable arch, sync, no pairing", {"pairing": False, "async_scheduling": False},
         [("plain", None, False)]),
        ("full glue, sync pairing", {"pair_async": False},
         [("plain", None, False), ("steering", None, True), ("LA", la, False)]),
        ("full glue, async pairing", {"pair_async": True},
         [("plain", None, False), ("steering", None, True), ("LA", la, False)]),
    ]
    for name, settings, workloads in engines:
        eng = vllm_engine(model, **settings, **common)
        steer = steering_vectors(eng.num_heads * eng.head_dim, eng.head_dim)
        for wname, v_la, steered in workloads:
            def make(i: int, cb: Any, v_la: Any = v_la, vecs: Any = steer if steered else ()) -> GenerationRequest:
                return request(i, texts[i % len(texts)], max_tokens, v_la, vecs,
                               ignore_eos=True, on_token=lambda ev: cb(ev))
            for c in levels:
                n = max(4, 4 * c)
                eng.call(_vllm_level(eng, make, c, min(8, n)))
                s = eng.call(_vllm_level(eng, make, c, n))
                rows.append({"engine": name, "workload": wname, "concurrency": c, **s})
                print(f"{name:36s} {wname:9s} c={c:3d} {s['tok_s']:9.1f} tok/s itl p50 {s['itl_p50_ms']:.2f} ms",
                      flush=True)
        eng.close()
        free_gpu()
    base = {r["concurrency"]: r["tok_s"] for r in rows if r["engine"] == "stock, async"}
    md = [f"# Where the glue's throughput goes — {device_name()}, 0.5B bf16, {max_tokens} tokens per request "
          "(EOS ignored), 4x concurrency requests per level\n",
          "| engine | workload | concurrency | tok/s | vs stock async | ITL p50 ms | ITL p99 ms | TTFT p50 ms |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['engine']} | {r['workload']} | {r['concurrency']} | {r['tok_s']:.0f} | "
                  f"{r['tok_s'] / base[r['concurrency']]:.2f}x | {r['itl_p50_ms']:.2f} | {r['itl_p99_ms']:.2f} | "
                  f"{r['ttft_p50_ms']:.1f} |")
    payload = {"max_tokens": max_tokens, "rows": rows}
    write(out, "vllm_breakdown", payload, "\n".join(md) + "\n")
    return payload


@dataclass(frozen=True)
class Workload:
    """One interleaved workload: the engine it runs on, LA or not, the steering spec of request i."""
    name: str
    engine: str
    la: bool = False
    steer: str = ""  # "" none, "two" the fixed two-vector spec, "distinct" one of 64 specs per request
    concurrency_factor: float = 1.0  # x C (2.0: stock@2C, LA's ceiling)
    fixed_concurrency: int | None = None  # the TTFT workloads run at C = 8


SORT_LA = "glue, full-sort nucleus: LA"


def interleaved_plan(pairing: str, steer_only: bool, distinct: bool, ttft_c: int,
                     compare_sync: bool = False, compare_sort: bool = False
                     ) -> tuple[dict[str, dict[str, Any]], list[Workload]]:
    """Engines (name -> ``VLLMSettings`` fields beyond the shared ones) and workloads of the
    interleaved phase. ``pairing`` is the glue engine's LA pairing mode (``sync`` or ``async``,
    ``--vllm-pairing``); ``compare_sync`` adds a second glue engine with synchronous pairing
    (plain and LA workloads) to an async run, so both modes are priced in one run; ``compare_sort``
    a glue engine whose engine core keeps the full-sort nucleus (``ALIGNSERVE_NUCLEUS_TRITON=0``),
    LA only: the sort-free nucleus priced in the same run."""
    engines: dict[str, dict[str, Any]] = {"stock": {"glue": False}, "glue": {"pair_async": pairing == "async"}}
    if steer_only:
        engines["steer-only"] = {"pairing": False}
    if compare_sync and pairing == "async":
        engines["glue-sync"] = {"pair_async": False}
    w = [Workload("stock vLLM (async)", "stock"), Workload(STOCK_2C, "stock", concurrency_factor=2.0),
         Workload("glue: plain", "glue"), Workload("glue: steering", "glue", steer="two")]
    if distinct:
        w.append(Workload(DISTINCT, "glue", steer="distinct"))
    w += [Workload("glue: LA", "glue", la=True), Workload("glue: LA+steering", "glue", la=True, steer="two")]
    if steer_only:
        w += [Workload("steer-only engine (async): plain", "steer-only"),
              Workload("steer-only engine (async): steering", "steer-only", steer="two")]
    if "glue-sync" in engines:
        w += [Workload(SYNC_PLAIN, "glue-sync"), Workload(SYNC_LA, "glue-sync", la=True)]
    if compare_sort:
        engines["glue-sort"] = {"pair_async": pairing == "async"}
        w.append(Workload(SORT_LA, "glue-sort", la=True))
    if ttft_c:
        w += [Workload(f"stock vLLM (async) @{ttft_c}", "stock", fixed_concurrency=ttft_c),
              Workload(f"glue: LA @{ttft_c}", "glue", la=True, fixed_concurrency=ttft_c)]
    return engines, w


def distinct_specs(hidden: int, head_dim: int, n: int = 64) -> list[tuple[SteeringVector, ...]]:
    """``n`` different two-vector specs (residual on layer 12, head 5 on layer 8), seeds 100..: a batch
    where every request brings its own vectors (#18's "64 distinct specs")."""
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(100 + k)
        out.append((SteeringVector(layer=12, vector=torch.randn(hidden, generator=g) * 0.6),
                    SteeringVector(layer=8, head=5, vector=torch.randn(head_dim, generator=g) * 2.0)))
    return out


def interleaved(model: str, out: Path, conc: int, max_tokens: int, rounds: int, per_level: int,
                mem: float = 0.28, pairing: str = "async", steer_only: bool = True, distinct: bool = True,
                ttft_c: int = 8, compare_sync: bool = False, compare_sort: bool = False) -> dict[str, Any]:
    """The headline ratios with drift removed: stock vLLM (async scheduling), the full glue engine
    (LA pairing ``pairing``) and optionally a steering-only engine (steerable architecture, no LA
    pairing, async scheduling) live side by side on the GPU, and the workloads run in alternation,
    ``rounds`` times each (every run of a round before the next round)."""
    texts = prompts(40)
    la = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    common: dict[str, Any] = {"gpu_memory_utilization": mem, "cudagraph_sizes": CUDAGRAPH_SIZES}
    plan, workloads = interleaved_plan(pairing, steer_only, distinct, ttft_c, compare_sync, compare_sort)
    engines = {}
    for key, extra in plan.items():
        # the engine core inherits the environment when it is spawned, here
        with _env(NUCLEUS_ENV, "0" if key == "glue-sort" else None):
            engines[key] = vllm_engine(model, **common, **extra)
    steer = steering_vectors(engines["glue"].num_heads * engines["glue"].head_dim, engines["glue"].head_dim)
    many = distinct_specs(engines["glue"].num_heads * engines["glue"].head_dim, engines["glue"].head_dim)
    runs: dict[str, list[dict[str, float]]] = {w.name: [] for w in workloads}
    payload: dict[str, Any] = {}
    for rnd in range(rounds + 1):  # round 0 warms every engine and workload up
        for wl in workloads:
            def make(i: int, cb: Any, wl: Workload = wl) -> GenerationRequest:
                vecs = steer if wl.steer == "two" else many[i % len(many)] if wl.steer == "distinct" else ()
                return request(i, texts[i % len(texts)], max_tokens, la if wl.la else None, vecs, ignore_eos=True,
                               on_token=lambda ev: cb(ev))
            eng = engines[wl.engine]
            c = wl.fixed_concurrency or int(conc * wl.concurrency_factor)
            n = 4 * c if wl.fixed_concurrency else max(2 * c, (per_level if rnd else 2 * conc) * c // conc)
            s = eng.call(_vllm_level(eng, make, c, n))
            if rnd:
                runs[wl.name].append(s)
                print(f"round {rnd} {wl.name:38s} {s['tok_s']:9.1f} tok/s itl p50 {s['itl_p50_ms']:.2f} ms "
                      f"ttft p50 {s['ttft_p50_ms']:.1f} ms", flush=True)
        if rnd:  # written after every round: a run cut short by the device's time limit keeps what it measured
            payload = _write_interleaved(out, runs, conc, max_tokens, rnd, rounds, per_level, model_label(model),
                                         pairing, ttft_c)
    for eng in engines.values():
        eng.close()
    free_gpu()
    return payload


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """``name=value`` while the block runs (``None``: unchanged)."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def la_efficiency(la_tok_s: float, stock_2c_tok_s: float) -> float:
    """#18's ceiling for LA at concurrency C: it decodes 2C sequences and shows half of them."""
    return la_tok_s / (stock_2c_tok_s / 2)


def interleaved_stem(label: str) -> str:
    """``vllm_interleaved_7b`` for the random-weight 7B shape (``rand-7b``, bench/random_checkpoint.py),
    so its table sits beside the 0.5B one instead of replacing it; ``vllm_interleaved`` otherwise."""
    return "vllm_interleaved_7b" if label.split(" ", 1)[0] == "rand-7b" else "vllm_interleaved"


def interleaved_ratios(summary: dict[str, dict[str, float]], ttft_c: int = 0) -> dict[str, float]:
    """#18's ratios from one run's medians (each only where both of its workloads ran)."""
    tok = {name: v["tok_s_median"] for name, v in summary.items()}
    pairs = {"glue plain / stock": ("glue: plain", "stock vLLM (async)"),
             "steering / stock": ("glue: steering", "stock vLLM (async)"),
             "64 distinct specs / stock": (DISTINCT, "stock vLLM (async)"),
             "LA+steering / LA": ("glue: LA+steering", "glue: LA"),
             "steer-only engine: steering / stock": ("steer-only engine (async): steering", "stock vLLM (async)"),
             "stock@2C / stock@C": (STOCK_2C, "stock vLLM (async)"),
             "glue plain, sync pairing / stock": (SYNC_PLAIN, "stock vLLM (async)")}
    ratios = {k: round(tok[a] / tok[b], 3) for k, (a, b) in pairs.items() if a in tok and b in tok}
    if STOCK_2C in tok:
        for name in ("glue: LA", "glue: LA+steering", SYNC_LA, SORT_LA):
            if name in tok:
                ratios[f"LA efficiency ({name})"] = round(la_efficiency(tok[name], tok[STOCK_2C]), 3)
    la_c, stock_c = f"glue: LA @{ttft_c}", f"stock vLLM (async) @{ttft_c}"
    if ttft_c and la_c in summary and stock_c in summary:
        ttft = summary[la_c]["ttft_p50_ms"] / summary[stock_c]["ttft_p50_ms"]
        ratios[f"TTFT p50 LA / stock @{ttft_c}"] = round(ttft, 3)
    return ratios


def _write_interleaved(out: Path, runs: dict[str, list[dict[str, float]]], conc: int, max_tokens: int,
                       done: int, rounds: int, per_level: int, label: str, pairing: str = "sync",
                       ttft_c: int = 0) -> dict[str, Any]:
    summary = {name: {"tok_s_median": statistics.median(r["tok_s"] for r in rs),
                      "tok_s_min": min(r["tok_s"] for r in rs), "tok_s_max": max(r["tok_s"] for r in rs),
                      "itl_p50_ms": statistics.median(r["itl_p50_ms"] for r in rs),
                      "itl_p99_ms": statistics.median(r["itl_p99_ms"] for r in rs),
                      "ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in rs)}
               for name, rs in runs.items() if rs}
    base = summary["stock vLLM (async)"]["tok_s_median"]
    ratios = interleaved_ratios(summary, ttft_c)
    md = [f"# Interleaved throughput — {device_name()}, {label}, concurrency {conc}, {per_level} requests × "
          f"{max_tokens} tokens (EOS ignored) per run, {done} of {rounds} alternating rounds after a warm-up round; "
          f"the engines share the GPU; glue engine LA pairing: {pairing}\n",
          "| workload | tok/s (median) | min–max | vs stock | ITL p50 ms | ITL p99 ms | TTFT p50 ms |",
          "|---|---|---|---|---|---|---|"]
    for name, v in summary.items():
        md.append(f"| {name} | {v['tok_s_median']:.0f} | {v['tok_s_min']:.0f}–{v['tok_s_max']:.0f} | "
                  f"{v['tok_s_median'] / base:.2f}x | {v['itl_p50_ms']:.2f} | {v['itl_p99_ms']:.2f} | "
                  f"{v['ttft_p50_ms']:.1f} |")
    md += ["", "| ratio (#18) | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    md += ["", "LA efficiency = LA@C / (stock@2C / 2) (#18: 1.0 = no cost beyond the second stream)."]
    payload = {"model": label, "concurrency": conc, "max_tokens": max_tokens, "requests_per_run": per_level,
               "rounds": rounds, "rounds_done": done, "pairing": pairing, "summary": summary, "ratios": ratios,
               "runs": runs}
    write(out, interleaved_stem(label), payload, "\n".join(md) + "\n")
    return payload
