"""LA pairing under vLLM's async scheduling vs synchronous scheduling: the proof needed before
``VLLMSettings.pair_async`` (``--vllm-pairing async``) can become the default.

Phases (one process, every phase runs both pairing modes):
- ``equivalence``: greedy outputs of base, LA and LA+steering requests on a glue engine with
  synchronous pairing and on one with async pairing, each against the transformers reference, and
  the two modes against each other; strict pair checking on (the scheduler raises if a pair ever
  leaves lock-step or its rows sample different tokens).
- ``stress``: many LA requests at once on a small KV cache (preemption, chunked prefill of
  different lengths), strict pair checking, per mode; the scheduler's hold / discard / re-queue
  counters.
- ``interleaved``: tok/s, ITL, TTFT with the engines side by side on the GPU and the workloads in
  alternation: stock vLLM async (at C and 2C, for LA efficiency) and sync, the glue engine with
  synchronous pairing (plain, LA) and with async pairing (plain, LA).

On the device machine, one phase per call: ``PHASES=equivalence bash bench/gpu/pairs_async.sh``
(then ``stress``, then ``interleaved``; ``SHAPE=7b`` for the 7B shape).

Results: ``vllm_pairs_equivalence_<device>``, ``vllm_pairs_stress_<device>``,
``vllm_pairs_interleaved_<device>`` (.json and .md).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import free_gpu, transformers_engine, vllm_engine
from service.alignment.linear_alignment import LinearAlignmentConfig
from service.engines.base import GenerationRequest, GenerationResult

from .common import CUDAGRAPH_SIZES, PRINCIPLE, device_name, prompts, request, steering_vectors, write
from .gpu import _gather, _vllm_level, first_divergence

PHASES = {
    "equivalence": "greedy LA vs the transformers reference, synchronous and async pairing",
    "stress": "LA requests at once on a small KV cache, strict pair checks, both pairing modes",
    "interleaved": "tok/s: stock async/sync, glue plain and LA with sync and async pairing",
}
DEFAULT = ("equivalence", "stress", "interleaved")
MODES = {"sync pairing": False, "async pairing": True}


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="HF model folder")
    ap.add_argument("--prompts", type=int, default=20, help="equivalence: prompts (default %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=48, help="equivalence: tokens per prompt (default %(default)s)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="equivalence: dtype of both engines (default %(default)s: bf16 near-ties move with the "
                    "batch composition, which differs between the modes)")
    ap.add_argument("--stress-requests", type=int, default=200, help="stress: requests (default %(default)s)")
    ap.add_argument("--stress-blocks", type=int, default=256, help="stress: KV blocks of 16 tokens (default 256)")
    ap.add_argument("--concurrency", type=int, default=64, help="interleaved: concurrency C (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved: rounds after warm-up (default 3)")
    ap.add_argument("--requests", type=int, default=512, help="interleaved: requests per run (default 512)")
    ap.add_argument("--tokens", type=int, default=128, help="interleaved: output tokens, EOS ignored (default 128)")
    ap.add_argument("--gpu-share", type=float, default=0.2,
                    help="interleaved: GPU memory share of each of the four engines (default %(default)s)")


def run(args: argparse.Namespace, phases: list[str]) -> int:
    ok = True
    for phase in phases:
        if phase == "equivalence":
            ok &= equivalence(args.model, args.out, args.prompts, args.max_tokens, args.dtype)["ok"]
        elif phase == "stress":
            ok &= stress(args.model, args.out, args.stress_requests, args.stress_blocks)["ok"]
        elif phase == "interleaved":
            interleaved(args.model, args.out, args.concurrency, args.tokens, args.rounds, args.requests, args.gpu_share)
    return 0 if ok else 1


def equivalence(model: str, out: Path, n_prompts: int, max_tokens: int, dtype: str = "float32") -> dict[str, Any]:
    texts = prompts(n_prompts)
    ref = transformers_engine(model, device="cuda", dtype=dtype, max_model_len=4096)
    steer = steering_vectors(ref.model.config.hidden_size, ref.head_dim)
    la = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    variants = {"base": (None, ()), "la_r3": (la, ()), "la_r3+steering": (la, steer)}
    ref_out = {name: [ref.generate([request(i, t, max_tokens, v_la, v_s)])[0] for i, t in enumerate(texts)]
               for name, (v_la, v_s) in variants.items()}  # batch of one: no padding in the reference
    del ref
    free_gpu()
    got: dict[str, dict[str, list[GenerationResult]]] = {}
    for mode, pair_async in MODES.items():
        eng = vllm_engine(model, max_model_len=4096, gpu_memory_utilization=0.5, cudagraph_sizes=CUDAGRAPH_SIZES,
                          dtype=dtype, strict_pairs=True, pair_async=pair_async)
        got[mode] = {name: eng.generate([request(i, t, max_tokens, v_la, v_s) for i, t in enumerate(texts)])
                     for name, (v_la, v_s) in variants.items()}
        eng.close()
        free_gpu()
    rows = []
    for name in variants:
        row: dict[str, Any] = {"variant": name, "prompts": len(texts)}
        for mode in MODES:
            row[mode] = _match(ref_out[name], got[mode][name])
        row["async vs sync"] = _match(got["sync pairing"][name], got["async pairing"][name])
        rows.append(row)
    # Pass: async pairing agrees with the reference at least as well as sync pairing does (near-ties
    # move with the batch composition, so neither need be 100 % identical); a pair leaving lock-step
    # would already have raised inside the engine (strict_pairs).
    ok = all(r["async pairing"]["identical"] >= r["sync pairing"]["identical"] for r in rows)
    md = [f"# LA pairing, sync vs async scheduling — greedy {dtype}, {len(texts)} prompts, {max_tokens} tokens\n",
          f"Device: {device_name()}. Identical = outputs equal to the transformers reference token for "
          "token; token match = tokens before the first divergence / tokens. Strict pair checking on.\n",
          "| variant | sync: identical | sync: token match | async: identical | async: token match | "
          "async = sync |", "|---|---|---|---|---|---|"]
    for r in rows:
        s, a, x = r["sync pairing"], r["async pairing"], r["async vs sync"]
        md.append(f"| {r['variant']} | {s['identical']}/{r['prompts']} | {s['token_match']:.3f} | "
                  f"{a['identical']}/{r['prompts']} | {a['token_match']:.3f} | {x['identical']}/{r['prompts']} |")
    md.append(f"\nVerdict: {'PASS' if ok else 'FAIL'} (async pairing at least as close to the reference as sync).")
    payload = {"dtype": dtype, "max_tokens": max_tokens, "rows": rows, "ok": ok}
    write(out, "vllm_pairs_equivalence", payload, "\n".join(md) + "\n")
    return payload


def _match(ref: list[GenerationResult], got: list[GenerationResult]) -> dict[str, Any]:
    exact, matched, total, first = 0, 0, 0, []
    for r, g in zip(ref, got, strict=True):
        d = first_divergence(r.token_ids, g.token_ids)
        n = max(len(r.token_ids), len(g.token_ids))
        total += n
        if d is None:
            exact += 1
            matched += n
        else:
            matched += d
            first.append(d)
    return {"identical": exact, "token_match": matched / max(total, 1), "first_divergences": first}


def stress(model: str, out: Path, n: int, blocks: int) -> dict[str, Any]:
    texts = prompts(60)
    rows = []
    for mode, pair_async in MODES.items():
        rng = random.Random(0)  # the same workload for both modes
        reqs = []
        for i in range(n):
            body = " ".join(rng.sample(texts, rng.randrange(1, 6)))
            la = LinearAlignmentConfig(PRINCIPLE, strength=rng.choice([1.0, 3.0]), adaptive=rng.random() < 0.3)
            reqs.append(request(i, body, rng.randrange(16, 400), la, ignore_eos=rng.random() < 0.5))
        eng = vllm_engine(model, max_model_len=2048, gpu_memory_utilization=0.5, num_gpu_blocks=blocks,
                          max_num_batched_tokens=512, cudagraph_sizes=CUDAGRAPH_SIZES, strict_pairs=True,
                          pair_async=pair_async)
        t0 = time.perf_counter()
        results = eng.call(asyncio.wait_for(_gather(eng, reqs), timeout=270))
        wall = time.perf_counter() - t0
        stats = eng.stats()
        eng.close()
        free_gpu()
        failures = [r for r in results if isinstance(r, BaseException)]
        done = [r for r in results if isinstance(r, GenerationResult)]
        rows.append({"mode": mode, "completed": len(done), "failed": len(failures),
                     "errors": [repr(e) for e in failures[:5]], "tokens": sum(r.completion_tokens for r in done),
                     "wall_s": wall, "preemptions": stats.preemptions})
    ok = all(r["failed"] == 0 and r["completed"] == n for r in rows)
    md = [f"# LA stress, sync vs async pairing — {n} LA requests at once, KV cache of {blocks} blocks x 16 tokens\n",
          f"Device: {device_name()}. Strict pair checking: the scheduler raises if a pair ever leaves lock-step "
          "or its two rows sample different tokens; every result is also compared with its partner stream.\n",
          "| mode | completed | failed | generated tokens | wall s | preemptions |", "|---|---|---|---|---|---|"]
    md += [f"| {r['mode']} | {r['completed']} | {r['failed']} | {r['tokens']} | {r['wall_s']:.1f} | "
           f"{r['preemptions']} |" for r in rows]
    md.append(f"\nVerdict: {'PASS' if ok else 'FAIL'}.")
    payload = {"requests": n, "kv_blocks": blocks, "rows": rows, "ok": ok}
    write(out, "vllm_pairs_stress", payload, "\n".join(md) + "\n")
    return payload


def interleaved(model: str, out: Path, conc: int, max_tokens: int, rounds: int, per_level: int,
                share: float = 0.2) -> dict[str, Any]:
    texts = prompts(40)
    la = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    common: dict[str, Any] = {"gpu_memory_utilization": share, "cudagraph_sizes": CUDAGRAPH_SIZES}
    engines = {"stock async": vllm_engine(model, glue=False, **common),
               "stock sync": vllm_engine(model, glue=False, async_scheduling=False, **common),
               "glue sync pairing": vllm_engine(model, pair_async=False, **common),
               "glue async pairing": vllm_engine(model, pair_async=True, **common)}
    workloads = [("stock vLLM async", "stock async", None, conc),
                 ("stock vLLM async @2C", "stock async", None, 2 * conc),
                 ("stock vLLM sync", "stock sync", None, conc),
                 ("glue, sync pairing: plain", "glue sync pairing", None, conc),
                 ("glue, sync pairing: LA", "glue sync pairing", la, conc),
                 ("glue, async pairing: plain", "glue async pairing", None, conc),
                 ("glue, async pairing: LA", "glue async pairing", la, conc)]
    runs: dict[str, list[dict[str, float]]] = {w[0]: [] for w in workloads}
    for rnd in range(rounds + 1):  # round 0 warms every engine and workload up
        for name, key, v_la, c in workloads:
            def make(i: int, cb: Any, v_la: Any = v_la) -> GenerationRequest:
                return request(i, texts[i % len(texts)], max_tokens, v_la, (), ignore_eos=True,
                               on_token=lambda ev: cb(ev))
            eng = engines[key]
            s = eng.call(_vllm_level(eng, make, c, per_level if rnd else 2 * c))
            if rnd:
                runs[name].append(s)
                print(f"round {rnd} {name:30s} {s['tok_s']:9.1f} tok/s itl p50 {s['itl_p50_ms']:.2f} ms", flush=True)
    for eng in engines.values():
        eng.close()
    free_gpu()
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("tok_s", "itl_p50_ms", "ttft_p50_ms")}
           for name, rs in runs.items()}
    base, two_c = med["stock vLLM async"]["tok_s"], med["stock vLLM async @2C"]["tok_s"]
    ratios = {"glue plain / stock (sync pairing)": med["glue, sync pairing: plain"]["tok_s"] / base,
              "glue plain / stock (async pairing)": med["glue, async pairing: plain"]["tok_s"] / base,
              "stock sync / stock async": med["stock vLLM sync"]["tok_s"] / base,
              "LA efficiency (sync pairing)": med["glue, sync pairing: LA"]["tok_s"] / (two_c / 2),
              "LA efficiency (async pairing)": med["glue, async pairing: LA"]["tok_s"] / (two_c / 2)}
    md = [f"# LA pairing, sync vs async scheduling: interleaved throughput — {device_name()}, concurrency {conc}, "
          f"{per_level} requests x {max_tokens} tokens (EOS ignored) per run, medians of {rounds} alternating "
          "rounds after a warm-up; four engines share the GPU\n",
          "| workload | tok/s | vs stock async | ITL p50 ms | TTFT p50 ms |", "|---|---|---|---|---|"]
    md += [f"| {n} | {v['tok_s']:.0f} | {v['tok_s'] / base:.2f}x | {v['itl_p50_ms']:.2f} | {v['ttft_p50_ms']:.1f} |"
           for n, v in med.items()]
    md += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    md.append("\nLA efficiency = LA@C / (stock@2C / 2).")
    payload = {"concurrency": conc, "max_tokens": max_tokens, "requests_per_run": per_level, "rounds": rounds,
               "median": med, "ratios": ratios, "runs": runs}
    write(out, "vllm_pairs_interleaved", payload, "\n".join(md) + "\n")
    return payload
