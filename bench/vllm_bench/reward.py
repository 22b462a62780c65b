"""The English reward model on the GPU: vLLM's pooling runner against the transformers reference,
next to the generator in one process, and served over HTTP.

Phases (run each in its own process so GPU memory is returned between them; results merge into
``vllm_reward_<device>.json`` / ``.md``, each phase's command under ``commands``):
- ``reference``: transformers ``AutoModelForSequenceClassification`` in float32 on the GPU scores
  the 36 cross-lingual pairs x 4 languages (288 conversations); per-language accuracy.
- ``vllm32``: ``VLLMRewardModel`` in float32 on the same conversations: max |difference|, accuracy.
- ``colocated``: generator (``VLLMEngine``, bf16) and reward model (bf16) in one process with
  their own memory shares; RM conversations/s alone, generator tokens/s alone, both at once.
- ``http``: ``alignserve serve --backend vllm`` with the shipped RM; /score ``reward_model`` over
  HTTP against the reference, bad input, /metrics, SIGTERM.

``vllm32``, ``colocated`` and ``http`` compare with the scores of an earlier ``reference`` phase
read back from the results JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.harness import ServerProcess, read_results, vllm_engine
from service.config import EMBEDDED_MODEL, Settings
from service.reward.factory import resolve_reward_model
from service.reward.reward_model import rm_conversation

from .common import DATA, GPU_PYTHON, provenance, request, write

LANGS = ("en", "ja", "zh", "ko")
PHASES = {
    "reference": "transformers float32 RM scores (288 conversations), per-language accuracy",
    "vllm32": "vLLM pooling runner float32 against the reference",
    "colocated": "generator and RM in one process: throughput alone and together",
    "http": "alignserve serve --backend vllm: /score reward_model against the reference",
}
DEFAULT = ("reference",)


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--home", default="/tmp/ahome", help="alignserve home with the pulled embedded model")
    ap.add_argument("--concurrency", type=int, default=64, help="colocated: concurrent generations (default 64)")
    ap.add_argument("--max-tokens", type=int, default=256, help="colocated: tokens per generation (default 256)")
    ap.add_argument("--port", type=int, default=18093, help="http: server port (default %(default)s)")


def run(args: argparse.Namespace, phases: list[str]) -> int:
    settings = Settings(model=EMBEDDED_MODEL, reward_model="embedded", home=Path(args.home))
    resolved = resolve_reward_model(settings)
    if resolved is None:
        raise SystemExit(f"no embedded reward model under {args.home}")
    path, name = resolved
    model = str(Path(args.home) / "models" / "qwen2.5-coder-0.5b-instruct" / "hf")
    prov = provenance()
    args.out.mkdir(parents=True, exist_ok=True)
    res = read_results(args.out / f"vllm_reward_{prov.tag}.json")
    res.update(reward_model=name)
    for phase in phases:
        t = time.perf_counter()
        ref = res.get("reference", {}).get("scores")
        if phase != "reference" and ref is None:
            raise SystemExit(f"phase {phase} compares with the reference scores: run the reference phase first")
        if phase == "reference":
            res["reference"] = phase_reference(path)
        elif phase == "vllm32":
            res["vllm32"] = phase_vllm32(path, ref)
        elif phase == "colocated":
            res["colocated"] = phase_colocated(path, model, ref, args.concurrency, args.max_tokens)
        else:
            res["http"] = phase_http(args.home, ref, args.port, args.out)
        print(f"[{phase}] {time.perf_counter() - t:.0f}s: "
              f"{json.dumps({k: v for k, v in res[phase].items() if k != 'scores'})[:600]}", flush=True)
        res.setdefault("commands", {})[phase] = prov.command
    write(args.out, "vllm_reward", res, markdown(res, prov.device), prov)
    return 0


def conversations() -> list[list[dict[str, str]]]:
    """Per language, per item: chosen then rejected."""
    items = json.loads((DATA / "cross_lingual_pairs.json").read_text())["items"]
    return [rm_conversation(it[lang][0], it[lang][k]) for lang in LANGS for it in items for k in (1, 2)]


def accuracy(scores: list[float]) -> dict[str, float]:
    n = len(scores) // (2 * len(LANGS))
    out = {}
    for li, lang in enumerate(LANGS):
        block = scores[li * 2 * n:(li + 1) * 2 * n]
        out[lang] = round(sum(c > r for c, r in zip(block[0::2], block[1::2], strict=True)) / n, 3)
    return out


def compare(scores: list[float], ref: list[float]) -> dict[str, Any]:
    diff = [abs(a - b) for a, b in zip(scores, ref, strict=True)]
    n = len(ref) // 2
    same_order = sum((scores[2 * i] > scores[2 * i + 1]) == (ref[2 * i] > ref[2 * i + 1]) for i in range(n))
    spread = max(ref) - min(ref)
    return {"max_abs_diff": round(max(diff), 5), "mean_abs_diff": round(sum(diff) / len(diff), 5),
            "reward_range": round(spread, 3), "pairs_same_preference": f"{same_order}/{n}",
            "accuracy": accuracy(scores)}


def phase_reference(path: str) -> dict[str, Any]:
    from service.reward.reward_model import TransformersRewardModel

    rm = TransformersRewardModel(path, device="cuda", dtype="float32", max_length=4096)
    convs = conversations()
    rm.rewards(convs[:8])
    torch.cuda.synchronize()
    t = time.perf_counter()
    scores = rm.rewards(convs)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    return {"scores": scores, "accuracy": accuracy(scores), "conversations": len(convs),
            "conversations_per_s": round(len(convs) / wall, 1)}


def phase_vllm32(path: str, ref: list[float]) -> dict[str, Any]:
    from service.reward.reward_model import VLLMRewardModel, VLLMRewardSettings

    rm = VLLMRewardModel(path, VLLMRewardSettings(gpu_memory_utilization=0.3, dtype="float32"))
    try:
        convs = conversations()
        rm.rewards(convs[:8])
        t = time.perf_counter()
        scores = rm.rewards(convs)
        wall = time.perf_counter() - t
    finally:
        rm.close()
    return {**compare(scores, ref), "conversations_per_s": round(len(convs) / wall, 1)}


def phase_colocated(path: str, model: str, ref: list[float], conc: int, max_tokens: int) -> dict[str, Any]:
    from service.reward.reward_model import VLLMRewardModel, VLLMRewardSettings

    gen = vllm_engine(model, gpu_memory_utilization=0.55, max_num_seqs=256)
    rm = VLLMRewardModel(path, VLLMRewardSettings(gpu_memory_utilization=0.15, dtype="bfloat16"))
    convs = conversations()
    reps = 4

    async def score_all() -> tuple[list[float], float]:
        t = time.perf_counter()
        out = await asyncio.gather(*(rm.arewards(convs) for _ in range(reps)))
        return out[0], time.perf_counter() - t

    async def generate_all() -> tuple[int, float]:
        t = time.perf_counter()
        reqs = [request(i, f"Tell me about topic number {i}: rivers, cities and history.", max_tokens,
                        ignore_eos=True) for i in range(conc)]
        res = await asyncio.gather(*(gen.agenerate(r) for r in reqs))
        return sum(r.completion_tokens for r in res), time.perf_counter() - t

    def on_rm_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, rm.loop)

    try:
        on_rm_loop(score_all()).result()  # warm-up
        gen.call(generate_all())
        bf16, rm_alone = on_rm_loop(score_all()).result()
        tokens, gen_alone = gen.call(generate_all())
        rm_fut = on_rm_loop(score_all())
        tokens_both, gen_both = gen.call(generate_all())
        _, rm_both = rm_fut.result()
    finally:
        rm.close()
        gen.close()
    n = reps * len(convs)
    return {"generator_memory_share": 0.55, "reward_memory_share": 0.15, "concurrent_generations": conc,
            "max_tokens": max_tokens, "rm_conversations": n,
            "rm_conversations_per_s_alone": round(n / rm_alone, 1),
            "generator_tokens_per_s_alone": round(tokens / gen_alone, 1),
            "generator_tokens_per_s_with_rm": round(tokens_both / gen_both, 1),
            "rm_conversations_per_s_with_generator": round(n / rm_both, 1),
            "bf16_vs_fp32_reference": compare(bf16, ref)}


def phase_http(home: str, ref: list[float], port: int, out: Path) -> dict[str, Any]:
    items = json.loads((DATA / "cross_lingual_pairs.json").read_text())["items"]
    srv = ServerProcess(["--backend", "vllm", "--model", EMBEDDED_MODEL, "--home", home,
                         "--gpu-memory-utilization", "0.6", "--reward-gpu-memory-utilization", "0.15",
                         "--db-url", f"sqlite:///{out / 'vllm_reward.db'}"], port, out / "vllm_reward.server.log")
    url = srv.url
    res: dict[str, Any] = {}
    try:
        res["ready_s"] = round(srv.wait_ready(900), 1)
        with httpx.Client(base_url=url, timeout=120) as c:
            res["readyz"] = c.get("/readyz").json()
            scores: list[float] = []
            t = time.perf_counter()
            for lang in LANGS:
                for it in items:
                    r = c.post("/score", json={"prompt": it[lang][0], "responses": it[lang][1:],
                                               "method": "reward_model"})
                    r.raise_for_status()
                    scores.extend(r.json()["scores"])
            res["requests"] = len(LANGS) * len(items)
            res["requests_per_s_sequential"] = round(res["requests"] / (time.perf_counter() - t), 1)
            res["vs_reference"] = compare(scores, ref)
            res["model"] = r.json()["model"]
            bad = c.post("/score", json={"prompt": "hi", "responses": ["a"], "method": "reward_model",
                                         "rubric": "x"})
            long = c.post("/score", json={"prompt": "hi", "responses": ["word " * 5000], "method": "reward_model"})
            judge = c.post("/score", json={"prompt": "hi", "responses": ["hello"]})
            gen = c.post("/generate", json={"messages": [{"role": "user", "content": "Say hello."}],
                                            "max_tokens": 16})
            res["status_codes"] = {"rubric_given": bad.status_code, "too_long": long.status_code,
                                   "judge": judge.status_code, "generate": gen.status_code}
            metrics = c.get("/metrics").text
            res["metrics_reward_count"] = next((ln.split()[-1] for ln in metrics.splitlines()
                                                if ln.startswith("alignserve_reward_model_score_count")), None)
    finally:
        res["shutdown"] = srv.stop()
    return res


def markdown(res: dict[str, Any], device: str) -> str:
    lines = [f"# English reward model on vLLM — {device}", "",
             f"Reward model `{res['reward_model']}` (the shipped Bradley-Terry head, `service/reward/heads/`); "
             "288 conversations = 36 held-out pairs x en/ja/zh/ko (`bench/data/cross_lingual_pairs.json`).", ""]
    if "reference" in res:
        r = res["reference"]
        lines += [f"- **transformers float32 (reference)**: accuracy {r['accuracy']}, "
                  f"{r['conversations_per_s']} conversations/s"]
    if "vllm32" in res:
        r = res["vllm32"]
        lines += [f"- **vLLM pooling runner float32**: max |diff| {r['max_abs_diff']} (rewards span "
                  f"{r['reward_range']}), same preference {r['pairs_same_preference']}, accuracy {r['accuracy']}, "
                  f"{r['conversations_per_s']} conversations/s"]
    if "colocated" in res:
        r = res["colocated"]
        b = r["bf16_vs_fp32_reference"]
        lines += ["", f"## Generator and reward model in one process (memory {r['generator_memory_share']} + "
                  f"{r['reward_memory_share']}, bf16)", "",
                  "| workload | alone | together |", "|---|---|---|",
                  f"| generator tokens/s ({r['concurrent_generations']} concurrent x {r['max_tokens']} tokens) | "
                  f"{r['generator_tokens_per_s_alone']} | {r['generator_tokens_per_s_with_rm']} |",
                  f"| RM conversations/s ({r['rm_conversations']} per run) | {r['rm_conversations_per_s_alone']} | "
                  f"{r['rm_conversations_per_s_with_generator']} |", "",
                  f"bf16 against the float32 reference: max |diff| {b['max_abs_diff']}, same preference "
                  f"{b['pairs_same_preference']}, accuracy {b['accuracy']}."]
    if "http" in res:
        r = res["http"]
        v = r["vs_reference"]
        lines += ["", "## Over HTTP (`alignserve serve --backend vllm`, shipped RM, bf16)", "",
                  f"Ready in {r['ready_s']} s; /readyz `{json.dumps(r['readyz'])}`. {r['requests']} `/score` "
                  f"requests (method `reward_model`, one pair each): max |diff| to the reference {v['max_abs_diff']}, "
                  f"same preference {v['pairs_same_preference']}, accuracy {v['accuracy']}, "
                  f"{r['requests_per_s_sequential']} requests/s sequentially. Status codes: {r['status_codes']}; "
                  f"`alignserve_reward_model_score_count` {r['metrics_reward_count']}; SIGTERM {r['shutdown']}."]
    lines += ["", f"Reproduce each phase P in its own process (reference, vllm32, colocated, http): `{GPU_PYTHON} "
              "-m bench.vllm_bench reward P --home /tmp/ahome`; the commands of this file's phases are under "
              "`commands` in its JSON."]
    return "\n".join(lines) + "\n"
