"""The ``gpu profile`` phase: where a step's time goes, stock vLLM vs the glue engine's workloads.

One engine at a time (stock vLLM, then the glue engine) on the GPU; for each workload, a warm-up,
then load at concurrency C while py-spy samples the engine core (its main thread: scheduler, input
preparation, logits processors, sampling, waiting for the GPU) and this process (AsyncLLM's output
handling and the callers), and nvidia-smi samples GPU utilisation. tok/s under the samplers is
reported beside the profile (py-spy runs ``--nonblocking``, so the cost is a few per cent of CPU).
Writes ``vllm_profile_<device>.json`` / ``.md`` and the raw py-spy files next to them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.harness import free_gpu, vllm_engine
from service.alignment.linear_alignment import LinearAlignmentConfig
from service.engines.base import GenerationRequest

from . import pyspy
from .common import CUDAGRAPH_SIZES, PRINCIPLE, device_name, model_label, prompts, request, steering_vectors, write


def engine_core_pids() -> list[int]:
    """This process's vLLM engine-core children, oldest first."""
    import psutil

    cores = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "EngineCore" in p.name() + " ".join(p.cmdline()):
                cores.append((p.create_time(), p.pid))
        except psutil.Error:
            continue
    return [pid for _, pid in sorted(cores)]


def _sampled(eng: Any, make: Any, conc: int, seconds: float, raw_dir: Path, tag: str) -> dict[str, Any]:
    from .gpu import _vllm_level

    eng.call(_vllm_level(eng, make, conc, 2 * conc))  # warm-up of this workload
    core = engine_core_pids()[-1]
    spies = {"engine_core": pyspy.record(core, seconds, raw_dir / f"{tag}.core.txt"),
             "api_process": pyspy.record(os.getpid(), seconds, raw_dir / f"{tag}.api.txt")}
    util = pyspy.gpu_util(raw_dir / f"{tag}.util.txt")
    runs = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        runs.append(eng.call(_vllm_level(eng, make, conc, 4 * conc)))
    util.terminate()
    res: dict[str, Any] = {"tok_s": [round(r["tok_s"], 1) for r in runs],
                           "itl_p50_ms": [round(r["itl_p50_ms"], 2) for r in runs],
                           "gpu_util_mean_pct": pyspy.mean_util((raw_dir / f"{tag}.util.txt").read_text())}
    for who, spy in spies.items():
        try:
            log = spy.communicate(timeout=seconds + 60)[0].decode(errors="replace")
        except Exception as exc:  # a sampler that hangs or fails is reported, the phase goes on
            spy.kill()
            log = f"{type(exc).__name__}: {exc}"
        path = raw_dir / f"{tag}.{'core' if who == 'engine_core' else 'api'}.txt"
        samples = pyspy.parse_raw(path.read_text()) if path.exists() else []
        busy = pyspy.thread_running(samples, "run_busy_loop") if who == "engine_core" else None
        res[who] = pyspy.summarise(samples, busy or ("MainThread" if who == "engine_core" else "vllm-loop"))
        res[who]["py_spy"] = log.strip().splitlines()[-2:] if log.strip() else []
    return res


def profile(model: str, out: Path, conc: int, max_tokens: int, seconds: float) -> dict[str, Any]:
    texts = prompts(40)
    la = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    raw_dir = out / "vllm_profile_raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"model": model_label(model), "concurrency": conc, "max_tokens": max_tokens,
                               "seconds": seconds, "workloads": {}}
    for key, glue in (("stock", False), ("glue", True)):
        eng = vllm_engine(model, glue=glue, gpu_memory_utilization=0.4, cudagraph_sizes=CUDAGRAPH_SIZES)
        steer = steering_vectors(eng.num_heads * eng.head_dim, eng.head_dim) if glue else ()
        loads = [("plain", None, ())] + ([("LA", la, ()), ("steering", None, steer)] if glue else [])
        for wname, v_la, vecs in loads:
            def make(i: int, cb: Any, v_la: Any = v_la, vecs: Any = vecs) -> GenerationRequest:
                return request(i, texts[i % len(texts)], max_tokens, v_la, vecs, ignore_eos=True,
                               on_token=lambda ev: cb(ev))
            name = f"{key}: {wname}"
            tag = f"{key}_{wname.lower()}"
            res = _sampled(eng, make, conc, seconds, raw_dir, tag)
            payload["workloads"][name] = res
            print(f"{name:18s} tok/s {res['tok_s']} gpu util {res['gpu_util_mean_pct']} % core own "
                  f"{res['engine_core'].get('own_share')}", flush=True)
            write(out, "vllm_profile", payload, markdown(payload))
        eng.close()
        free_gpu()
    return payload


def markdown(payload: dict[str, Any]) -> str:
    md = [f"# Where the time goes — {device_name()}, {payload['model']}, concurrency {payload['concurrency']}, "
          f"{payload['max_tokens']} tokens per request (EOS ignored), py-spy {payload['seconds']:.0f} s per workload\n",
          "| workload | tok/s under the samplers | ITL p50 ms | GPU utilisation (nvidia-smi mean) | "
          "engine core: this project's code on the stack |", "|---|---|---|---|---|"]
    for name, w in payload["workloads"].items():
        tok = sorted(w["tok_s"])
        itl = sorted(w["itl_p50_ms"])
        md.append(f"| {name} | {tok[len(tok) // 2] if tok else '—'} | {itl[len(itl) // 2] if itl else '—'} | "
                  f"{w['gpu_util_mean_pct']} % | {100 * w['engine_core']['own_share']:.1f} % |")
    md.append("")
    for who, title in (("engine_core", "Engine core, main thread"), ("api_process", "API process (AsyncLLM, callers)")):
        md.append(f"## {title}\n")
        for name, w in payload["workloads"].items():
            md += pyspy.markdown_rows(name, w[who])
    return "\n".join(md) + "\n"
