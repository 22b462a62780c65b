"""Compiling Activation-RM profiles on the vLLM engine, against the transformers reference.

One process, phases in order (the reference engine is freed before vLLM starts):

- ``reference``: ``TransformersEngine`` float32 on the GPU. Head capture on the French profile's
  few-shot contexts and response ends, readout P(Yes) with no patch and with random head patches,
  a full compile (timed) and the held-out French-over-English accuracy of its profile.
- ``vllm32``: ``VLLMEngine`` float32 (CUDA graphs on). The same captures (``engines/vllm/capture.py``,
  run inside the worker) and readout options, compared with the reference; a full compile through
  the same code, timed, with heads in common and held-out accuracy; prefix-cache isolation of
  steered KV (``steer_tables.cache_salt``).
- ``vllm16``: the serving default (bfloat16): compile time and held-out accuracy.
- ``serving``: generation tokens/s alone and while a compile runs in another thread, for each
  ``--caps`` bound on the compile's requests in flight (``VLLMSettings.compile_concurrency``).
- ``http``: ``alignserve serve --backend vllm``: ``POST /profiles`` with the examples, job polled to
  success while ``/generate`` keeps answering, then ``/score activation_rm`` and steered
  ``/generate`` with the stored profile.

Writes ``<--name>_<device>.json`` and ``.md`` (default ``vllm_compile``) after the last phase;
``vllm32`` compares with ``reference`` only when both run in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.arm_steering import load_profile, summarise
from bench.harness import ServerProcess, free_gpu, transformers_engine, vllm_engine
from service.alignment.spec import SteeringVector
from service.engines.base import Engine
from service.engines.chat import with_system
from service.reward.activation_rm import (
    CompiledARM,
    CompileSettings,
    LabelledExample,
    compile_activation_rm,
    fewshot_context,
    head_patches,
)
from service.reward.judge import YES_NO, judge_conversation

from .common import provenance, request, write

PHASES = {
    "reference": "transformers float32: captures, readout, timed compile, held-out accuracy",
    "vllm32": "vLLM float32: the same against the reference, compile, prefix-cache isolation",
    "vllm16": "vLLM bfloat16 (serving default): compile time and held-out accuracy",
    "serving": "generation tok/s alone and during a compile, per compile_concurrency bound",
    "http": "alignserve serve --backend vllm: POST /profiles job while /generate answers",
}
DEFAULT = ("reference", "vllm32", "vllm16", "serving", "http")


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="HF model folder")
    ap.add_argument("--home", default="/tmp/ahome", help="http: alignserve home (default %(default)s)")
    ap.add_argument("--caps", type=int, nargs="+", default=[0, 64, 16],
                    help="serving: compile_concurrency values to measure (0 = unbounded; default 0 64 16)")
    ap.add_argument("--name", default="vllm_compile", help="results file stem (the device tag is appended)")
    ap.add_argument("--iterations", type=int, default=CompileSettings.iterations,
                    help="REINFORCE iterations per compile (default %(default)s)")
    ap.add_argument("--port", type=int, default=18093, help="http: server port (default %(default)s)")


def run(args: argparse.Namespace, phases: list[str]) -> int:
    rubric, train, test = load_profile()
    inp = Inputs(rubric, train, test)
    prov = provenance()
    res: dict[str, Any] = {"train_examples": len(train), "held_out_pairs": len(test), "iterations": args.iterations}
    ref = None
    for phase in phases:
        t = time.perf_counter()
        print(f"== {phase}", flush=True)
        if phase == "reference":
            ref = phase_reference(args.model, inp, args.iterations)
            res["reference"] = {k: ref[k] for k in ("compile_s", "held_out")}
        elif phase == "vllm32":
            res["vllm32"] = phase_vllm(args.model, inp, ref, args.iterations, "float32")
        elif phase == "vllm16":
            res["vllm16"] = phase_vllm(args.model, inp, None, args.iterations, "bfloat16")
        elif phase == "serving":
            res["serving"] = phase_serving(args.model, inp, args.iterations, args.caps)
        else:
            res["http"] = phase_http(args.model, args.home, inp, args.out, args.port, args.iterations)
        print(json.dumps({phase: res.get(phase)}, default=str)[:2000], f"({time.perf_counter() - t:.0f}s)", flush=True)
    write(args.out, args.name, res, markdown(res, prov.device), prov)
    ok = res.get("http", {}).get("ok", True) is not False and \
        res.get("vllm32", {}).get("cache_isolation", {}).get("ok", True) is not False
    return 0 if ok else 1


class Inputs:
    """Everything both engines see: contexts for the means, response ends, readout queries, options."""

    def __init__(self, rubric: str, train: list[LabelledExample], test: list[list[str]], seed: int = 0) -> None:
        rng = random.Random(seed)
        self.rubric, self.train, self.test = rubric, train, test
        half = len(train) // 2  # French (good) answers first, then the English ones
        picks = [train[i + k * half] for i in range(4) for k in (0, 1)]
        self.contexts = [fewshot_context(rng.sample([e for e in train if e is not q], 4), q, rubric) for q in picks]
        self.ends = [[{"role": "user", "content": e.prompt}] for e in picks]
        self.completions = [e.response for e in picks]
        self.queries = [judge_conversation(e.prompt, e.response, rubric) for e in train]
        n = len(test)
        self.held_out = ([judge_conversation(q, fr, rubric) for q, fr, _ in test]
                         + [judge_conversation(q, en, rubric) for q, _, en in test])
        self.pairs = n

    def options(self, means: torch.Tensor, count: int = 4, seed: int = 0) -> list[list[SteeringVector]]:
        g = torch.Generator().manual_seed(seed)
        layers, heads = means.shape[:2]
        return [[]] + [head_patches(means, (torch.rand(layers * heads, generator=g) < 0.1).float())
                       for _ in range(count)]


def compile_on(engine: Engine, inp: Inputs, iterations: int) -> tuple[CompiledARM, float]:
    shape = (engine.num_layers, engine.num_heads, engine.head_dim, engine.max_model_len)
    t = time.perf_counter()
    compiled = compile_activation_rm(lambda call: call(engine), inp.train, inp.rubric,
                                     CompileSettings(num_heads=16, iterations=iterations, seed=0),
                                     shape, engine.model_name)
    return compiled, time.perf_counter() - t


def held_out(engine: Engine, inp: Inputs, compiled: CompiledARM) -> dict[str, Any]:
    p = torch.tensor(engine.label_probability(inp.held_out, YES_NO, compiled.scoring_steering()))
    s = summarise(p, inp.pairs)
    return {"accuracy": round(float(s["accuracy"]), 3),  # type: ignore[arg-type]
            "logit_gap": round(float(s["logit_gap"]), 3)}  # type: ignore[arg-type]


def capture_all(engine: Engine, inp: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    return engine.capture_head_activations(inp.contexts), engine.capture_head_activations(inp.ends, inp.completions)


def compare_acts(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    g, r = got.flatten(2).double(), ref.flatten(2).double()  # [n, layers, heads*dim]
    rel = ((g - r).norm(dim=-1) / r.norm(dim=-1)).max()
    cos = torch.nn.functional.cosine_similarity(g, r, dim=-1).min()
    return {"max_abs_diff": round(float((g - r).abs().max()), 5), "max_relative_error": round(float(rel), 5),
            "min_cosine": round(float(cos), 6), "max_abs_value": round(float(r.abs().max()), 3)}


def phase_reference(model: str, inp: Inputs, iterations: int) -> dict[str, Any]:
    eng = transformers_engine(model, device="cuda" if torch.cuda.is_available() else "cpu", dtype="float32",
                              max_model_len=2048)
    ctx, ends = capture_all(eng, inp)
    means = ctx.mean(0)
    readout = eng.open_readout(inp.queries)
    p = readout.label_probability(inp.options(means), YES_NO)
    readout.close()
    compiled, wall = compile_on(eng, inp, iterations)
    res = {"contexts": ctx, "ends": ends, "readout": p, "compiled": compiled,
           "compile_s": round(wall, 1), "held_out": held_out(eng, inp, compiled)}
    del eng
    free_gpu()
    return res


def serving_during_compile(eng: Any, inp: Inputs, iterations: int, caps: list[int]) -> dict[str, Any]:
    """Plain generation tokens/s alone, then while a compile runs in another thread, for each bound
    on the compile's requests in flight (``VLLMSettings.compile_concurrency``; 0 = unbounded)."""
    async def batch() -> int:
        reqs = [request(i, f"Tell me about topic number {i}: rivers, cities and history.", 64, ignore_eos=True)
                for i in range(32)]
        return sum(r.completion_tokens for r in await asyncio.gather(*(eng.agenerate(r) for r in reqs)))

    def rate(stop: threading.Event | None, seconds: float) -> float:
        tokens, t = 0, time.perf_counter()
        while (stop is None and time.perf_counter() - t < seconds) or (stop is not None and not stop.is_set()):
            tokens += eng.call(batch())
        return tokens / (time.perf_counter() - t)

    alone = rate(None, 10.0)
    rows = []
    for cap in caps:
        eng.settings.compile_concurrency = cap
        done = threading.Event()
        box: dict[str, Any] = {}

        def job(box: dict[str, Any] = box, done: threading.Event = done) -> None:
            try:
                box["compiled"], box["s"] = compile_on(eng, inp, iterations)
            finally:
                done.set()

        th = threading.Thread(target=job)
        th.start()
        during = rate(done, 0)
        th.join()
        rows.append({"compile_concurrency": cap, "compile_s_while_serving": round(box["s"], 1),
                     "generation_tokens_per_s_while_compiling": round(during, 1),
                     "share_of_alone": round(during / alone, 3)})
        print(rows[-1], flush=True)
    return {"generation_tokens_per_s_alone": round(alone, 1), "concurrent_requests": 32, "max_tokens": 64,
            "rows": rows}


def cache_isolation(eng: Any, compiled: CompiledARM) -> dict[str, Any]:
    """A steered answer's KV must not be reused by an unsteered follow-up that repeats it."""
    from vllm import SamplingParams

    from service.engines.vllm.pairing import EXTRA_KEY
    from service.engines.vllm.steer_tables import vectors_to_args

    steering = compiled.generation_steering(4.0)

    async def run(tokens: list[int], steer: list[SteeringVector], max_tokens: int, tag: str) -> tuple[list[int], int]:
        extra = {EXTRA_KEY: {"steer": vectors_to_args(steer)}} if steer else None
        sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, extra_args=extra)
        final: Any = None
        async for out in eng.llm.generate(eng._prompt(tokens, steer), sp, f"iso-{tag}"):
            final = out
        return list(final.outputs[0].token_ids), int(final.num_cached_tokens or 0)

    async def scenario(question: str, steer: list[SteeringVector], tag: str) -> dict[str, int]:
        prompt = eng.encode_chat(with_system([{"role": "user", "content": question}], eng.default_system))
        answer, _ = await run(prompt, steer, 96, f"{tag}-a")
        tail = eng.tokenizer.encode("\nGo on.", add_special_tokens=False)
        _, cached = await run(prompt + answer + tail, [], 1, f"{tag}-b")
        return {"prompt_tokens": len(prompt), "answer_tokens": len(answer), "follow_up_cached_tokens": cached}

    async def both() -> dict[str, Any]:
        steered = await scenario("Describe the city of Lyon for a visitor.", steering, "steered")
        plain = await scenario("Describe the city of Lille for a visitor.", [], "plain")
        return {"steered_answer_then_unsteered_follow_up": steered,
                "control_unsteered_answer_then_follow_up": plain}

    res: dict[str, Any] = eng.call(both())
    s = res["steered_answer_then_unsteered_follow_up"]
    c = res["control_unsteered_answer_then_follow_up"]
    res["ok"] = (s["follow_up_cached_tokens"] < s["prompt_tokens"] + 16
                 and c["follow_up_cached_tokens"] >= c["prompt_tokens"] + c["answer_tokens"] - 16)
    return res


def phase_serving(model: str, inp: Inputs, iterations: int, caps: list[int]) -> dict[str, Any]:
    eng = vllm_engine(model, gpu_memory_utilization=0.5, max_model_len=2048)
    try:
        return {"dtype": "bfloat16", **serving_during_compile(eng, inp, iterations, caps)}
    finally:
        eng.close()
        free_gpu()


def phase_vllm(model: str, inp: Inputs, ref: dict[str, Any] | None, iterations: int, dtype: str) -> dict[str, Any]:
    eng = vllm_engine(model, "You are a helpful assistant.", dtype=dtype, gpu_memory_utilization=0.5,
                      max_model_len=2048)
    res: dict[str, Any] = {"dtype": dtype}
    try:
        ctx, ends = capture_all(eng, inp)
        if ref is not None:
            res["capture_fewshot_contexts"] = compare_acts(ctx, ref["contexts"])
            res["capture_response_ends"] = compare_acts(ends, ref["ends"])
            readout = eng.open_readout(inp.queries)
            p = readout.label_probability(inp.options(ref["contexts"].mean(0)), YES_NO)
            res["readout_max_abs_diff_p_yes"] = round(float((p - ref["readout"]).abs().max()), 5)
            res["readout_options"], res["readout_queries"] = int(p.shape[0]), int(p.shape[1])
            res["readout_p_yes_range"] = [round(float(ref["readout"].min()), 3), round(float(ref["readout"].max()), 3)]
        t = time.perf_counter()
        eng.capture_head_activations(inp.contexts)
        res["capture_8_contexts_s"] = round(time.perf_counter() - t, 3)
        compiled, wall = compile_on(eng, inp, iterations)
        res["compile_s"] = round(wall, 1)
        res["held_out"] = held_out(eng, inp, compiled)
        res["patched_pair_accuracy_in_sample"] = compiled.info["patched_pair_accuracy"]
        if ref is not None:
            theirs: CompiledARM = ref["compiled"]
            res["heads"] = len(compiled.heads)
            res["heads_in_common_with_reference"] = len(set(compiled.heads) & set(theirs.heads))
            res["steering_heads_in_common"] = len(set(compiled.steering_heads) & set(theirs.steering_heads))
            res["reference_profile_held_out_on_vllm"] = held_out(eng, inp, theirs)
            res["cache_isolation"] = cache_isolation(eng, compiled)
    finally:
        eng.close()
        free_gpu()
    return res


def phase_http(model: str, home: str, inp: Inputs, out: Path, port: int, iterations: int) -> dict[str, Any]:
    db = out / "vllm_compile.profiles.db"
    db.unlink(missing_ok=True)
    srv = ServerProcess(["--backend", "vllm", "--model", model, "--home", home, "--db-url", f"sqlite:///{db}",
                         "--gpu-memory-utilization", "0.5", "--max-model-len", "2048"], port,
                        out / "vllm_compile.server.log")
    url = srv.url
    res: dict[str, Any] = {}
    try:
        res["ready_s"] = round(srv.wait_ready(900), 1)
        examples = [{"prompt": e.prompt, "response": e.response, "label": "good" if e.good else "bad"}
                    for e in inp.train]
        with httpx.Client(base_url=url, timeout=120) as c:
            r = c.post("/profiles", json={"name": "french", "rubric": inp.rubric, "activation_rm": {
                "examples": examples, "num_heads": 16, "iterations": iterations, "steer_strength": 4.0}})
            res["create_status"] = r.status_code
            job = r.json()["id"]
            t0, latencies, phases = time.monotonic(), [], set()
            while True:
                st = c.get(f"/jobs/{job}").json()
                phases.add(st["phase"])
                if st["status"] in ("succeeded", "failed", "cancelled"):
                    break
                t = time.monotonic()
                g = c.post("/generate", json={"prompt": "Name a river in France.", "max_tokens": 16})
                latencies.append((g.status_code, round(time.monotonic() - t, 3)))
                time.sleep(0.2)
            res["job"] = {"status": st["status"], "error": st.get("error"), "wall_s": round(time.monotonic() - t0, 1),
                          "phases_seen": sorted(p for p in phases if p)}
            res["generate_during_compile"] = {"requests": len(latencies),
                                              "all_200": all(s == 200 for s, _ in latencies),
                                              "max_latency_s": max((x for _, x in latencies), default=None)}
            prof = c.get("/profiles/french").json()
            res["compiled"] = {k: prof.get("compiled", {}).get(k) for k in
                               ("zero_shot_pair_accuracy", "patched_pair_accuracy", "compile_s", "model")}
            wins = 0
            for q, fr, en in inp.test:
                s = c.post("/score", json={"prompt": q, "responses": [fr, en], "method": "activation_rm",
                                           "profile": "french"})
                s.raise_for_status()
                wins += s.json()["scores"][0] > s.json()["scores"][1]
            res["score_activation_rm_french_over_english"] = round(wins / len(inp.test), 3)
            texts = {}
            for strength in (0.0, 4.0):
                r = c.post("/generate", json={"prompt": "What is the capital of Spain?", "max_tokens": 32,
                                              "profile": "french", "steer_strength": strength})
                texts[str(strength)] = {"status": r.status_code, "text": r.json().get("text"),
                                        "method": r.json().get("alignment", {}).get("method")}
            res["steered_generate"] = texts
    finally:
        res["shutdown"] = srv.stop()
    res["ok"] = (res.get("job", {}).get("status") == "succeeded"
                 and res.get("generate_during_compile", {}).get("all_200", False))
    return res


def markdown(res: dict[str, Any], device: str) -> str:
    r, v, b, h = res.get("reference", {}), res.get("vllm32", {}), res.get("vllm16", {}), res.get("http", {})
    lines = [f"# Activation-RM compile on the vLLM engine — {device}", "",
             f"French-answer profile (`bench/data/french_profile.json`: {res['train_examples']} labelled examples; "
             f"held-out: {res['held_out_pairs']} French/English pairs), 16 heads, {res['iterations']} REINFORCE "
             "iterations, seed 0. Reference: the transformers engine in float32 on the same GPU.", ""]
    if v.get("capture_fewshot_contexts"):
        c, e = v["capture_fewshot_contexts"], v["capture_response_ends"]
        lines += ["## Equivalence (vLLM float32 vs transformers float32)", "",
                  "| quantity | max abs diff | max relative error (per sequence x layer) | min cosine |",
                  "|---|---|---|---|",
                  f"| head activations, 8 few-shot contexts | {c['max_abs_diff']} | {c['max_relative_error']} | "
                  f"{c['min_cosine']} |",
                  f"| head activations, 8 response ends | {e['max_abs_diff']} | {e['max_relative_error']} | "
                  f"{e['min_cosine']} |",
                  f"| readout P(Yes), {v['readout_options']} options x {v['readout_queries']} queries | "
                  f"{v['readout_max_abs_diff_p_yes']} | P(Yes) range {v['readout_p_yes_range']} | – |", ""]
    if r or v or b:
        lines += ["## Compile", "", "| engine | compile s | held-out French > English | logit gap | heads in common |",
                  "|---|---|---|---|---|"]
    if r:
        lines.append(f"| transformers float32 | {r['compile_s']} | {r['held_out']['accuracy']} | "
                     f"{r['held_out']['logit_gap']} | – |")
    if v:
        lines.append(f"| vLLM float32 | {v['compile_s']} | {v['held_out']['accuracy']} | "
                     f"{v['held_out']['logit_gap']} | "
                     f"{v.get('heads_in_common_with_reference')}/{v.get('heads')} readout, "
                     f"{v.get('steering_heads_in_common')}/16 steering |")
    if b:
        lines.append(f"| vLLM bfloat16 (serving default) | {b['compile_s']} | {b['held_out']['accuracy']} | "
                     f"{b['held_out']['logit_gap']} | – |")
    if v.get("reference_profile_held_out_on_vllm"):
        lines += ["", f"The reference-compiled profile scored on vLLM float32: held-out accuracy "
                  f"{v['reference_profile_held_out_on_vllm']['accuracy']} (logit gap "
                  f"{v['reference_profile_held_out_on_vllm']['logit_gap']})."]
    if res.get("serving"):
        s = res["serving"]
        lines += ["", f"## Serving while compiling (vLLM {s['dtype']})", "",
                  f"{s['concurrent_requests']} concurrent plain generations of {s['max_tokens']} tokens, back to back: "
                  f"{s['generation_tokens_per_s_alone']} tok/s with no compile running. The same while a compile "
                  "runs in another thread, for each bound on the compile's vLLM requests in flight:", "",
                  "| compile_concurrency | generation tok/s while compiling | share of alone | compile s |",
                  "|---|---|---|---|"]
        lines += [f"| {r['compile_concurrency'] or 'unbounded'} | {r['generation_tokens_per_s_while_compiling']} | "
                  f"{r['share_of_alone']} | {r['compile_s_while_serving']} |" for r in s["rows"]]
    if v.get("cache_isolation"):
        c = v["cache_isolation"]
        s, p = c["steered_answer_then_unsteered_follow_up"], c["control_unsteered_answer_then_follow_up"]
        lines += ["", "## Steered KV kept out of other requests' prefix cache", "",
                  f"- steered answer ({s['answer_tokens']} tokens after a {s['prompt_tokens']}-token prompt), then an "
                  f"unsteered follow-up repeating it: {s['follow_up_cached_tokens']} tokens from the cache",
                  f"- control, unsteered answer ({p['answer_tokens']} tokens after {p['prompt_tokens']}): "
                  f"{p['follow_up_cached_tokens']} tokens from the cache", f"- ok: {c['ok']}"]
    if h:
        j = h.get("job", {})
        g = h.get("generate_during_compile", {})
        lines += ["", "## Over HTTP (`alignserve serve --backend vllm`)", "",
                  f"- `POST /profiles` with {res['train_examples']} examples: {h.get('create_status')}; job "
                  f"{j.get('status')} in {j.get('wall_s')} s (phases {j.get('phases_seen')}); error: {j.get('error')}",
                  f"- `/generate` during the compile: {g.get('requests')} requests, all 200: {g.get('all_200')}, "
                  f"max latency {g.get('max_latency_s')} s",
                  f"- stored profile: {h.get('compiled')}",
                  f"- `/score activation_rm` French > English on held-out pairs: "
                  f"{h.get('score_activation_rm_french_over_english')}",
                  "- steered `/generate` (strength 0 vs 4): "
                  f"{json.dumps(h.get('steered_generate'), ensure_ascii=False)}",
                  f"- shutdown: {h.get('shutdown')}"]
    return "\n".join(lines) + "\n"
