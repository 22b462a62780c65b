"""Fault runs on the GPU (#20): what a client sees when the engine cannot serve, over HTTP only.

Phases (each starts its own ``alignserve serve`` process and stops it):

* ``vllm``: ``--backend vllm`` on the embedded 0.5B with its English reward model and a KV cache
  capped with ``--kv-cache-blocks``.
  1. KV budget: an LA request whose two streams cannot be in the cache at once gets 413
     ``exceeds_kv_budget`` at once, a plain request of the same length is served, and the
     traffic running beside them is unaffected.
  2. Outside memory pressure: a process takes all but ~0.5 GiB of the GPU's free memory while
     traffic runs (vLLM reserved its weights and KV cache at start, so nothing may fail).
  3. Reward-model engine core SIGKILLed: ``/score`` with ``reward_model`` turns 503
     ``reward_model_unavailable``, ``/readyz`` stays 200 and reports it, generation and the judge
     keep serving.
  4. Generator engine core SIGKILLed under load (streams and JSON requests in flight, more queued
     in vLLM): every one fails with 503 ``engine_unavailable`` or a stream ``error`` event, how
     soon; ``/readyz`` 503 how soon; the server exits with status 70; no process of the server's
     tree holds GPU memory afterwards.
* ``transformers_oom``: ``--backend transformers --device cuda``; another process takes all but
  ~0.1 GiB of free GPU memory, then one long prompt (~6k tokens: its KV cache and activations need
  several hundred MiB) is sent with
  three short ones: the long one gets 503 ``out_of_memory``, the short ones 200, and once the
  memory is given back the long prompt is served.

Writes ``vllm_faults_<device>.json`` and ``.md``. GPU host, vLLM in /tmp/site:
    PYTHONPATH=$PWD:/tmp/site python3 -m bench.vllm_bench faults --home /tmp/ahome --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import ServerProcess

from .common import provenance, write

PHASES = {
    "vllm": "vLLM: KV budget, outside memory pressure, reward-model and generator engine cores killed",
    "transformers_oom": "transformers on CUDA: a real out-of-memory fails only its request",
}
DEFAULT = ("vllm", "transformers_oom")
MODEL = "embedded:qwen2.5-coder-0.5b-instruct"
LONG_WRITING = ["Write a long story about a lighthouse keeper and a storm.",
                "Write a detailed essay on the history of bridges.",
                "Describe, step by step and at length, how to build a wooden boat.",
                "Write a long letter from a sailor to his family."]
HOG = """
import sys, time, torch
keep = float(sys.argv[1]) * 2**30
free, _ = torch.cuda.mem_get_info()
blocks = []
while free > keep + 2**28:
    blocks.append(torch.empty(int(min(free - keep, 8 * 2**30)), dtype=torch.uint8, device="cuda"))
    free, _ = torch.cuda.mem_get_info()
print("HOG", free / 2**30, flush=True)
time.sleep(float(sys.argv[2]))
"""


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--home", default="/tmp/ahome", help="model cache with the embedded model")
    ap.add_argument("--model", default=MODEL, help=f"served model (default {MODEL}; any HF folder, e.g. a "
                    "random-weight one from bench.random_checkpoint)")
    ap.add_argument("--reward-model", default="auto", help="the server's --reward-model (default auto: the "
                    "shipped head with the embedded model; a one-label RM folder otherwise, which the vllm "
                    "phase's reward-model kill needs)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/faults"), help="logs and DBs")
    ap.add_argument("--kv-blocks", type=int, default=320, help="vllm: KV-cache blocks of 16 tokens (default 320)")
    ap.add_argument("--port", type=int, default=18095)


def run(args: argparse.Namespace, phases: list[str]) -> int:
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"phases": {}}
    ok = True
    for phase in phases:
        t0 = time.monotonic()
        try:
            res = (vllm_phase if phase == "vllm" else transformers_oom)(args)
        except Exception as exc:  # a broken phase is reported, the others still run
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res["wall_s"] = round(time.monotonic() - t0, 1)
        report["phases"][phase] = res
        ok = ok and bool(res.get("ok"))
        print(json.dumps({phase: res}, default=str)[:4000], flush=True)
        save(args, report, phases)
    return 0 if ok else 1


def save(args: argparse.Namespace, report: dict[str, Any], phases: list[str]) -> None:
    write(args.out, "vllm_faults", report, markdown(report), provenance())


# ---- helpers -----------------------------------------------------------------------------
def gpu_apps() -> dict[int, int]:
    """pid -> MiB of every process holding GPU memory (nvidia-smi)."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    apps: dict[int, int] = {}
    for line in out.strip().splitlines():
        with contextlib.suppress(ValueError):
            pid, mib = (int(x.strip()) for x in line.split(","))
            apps[pid] = mib
    return apps


def tree(pid: int) -> list[int]:
    import psutil

    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def engine_cores(pid: int) -> list[tuple[int, int]]:
    """(pid, GPU MiB) of the server's vLLM engine-core processes in start order: the generator
    first (the runtime loads the reward model only after it)."""
    import psutil

    apps = gpu_apps()
    cores = []
    for p in tree(pid)[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(p)
            if "EngineCore" in proc.name() + " ".join(proc.cmdline()) or p in apps:
                cores.append((proc.create_time(), p, apps.get(p, 0)))
    return [(p, mib) for _, p, mib in sorted(cores)]


def hog(keep_gib: float, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOG, str(keep_gib), str(seconds)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("HOG"):
        raise RuntimeError(f"memory hog did not start: {line!r}")
    return proc


def error_type(r: httpx.Response) -> str | None:
    with contextlib.suppress(Exception):
        return str(r.json()["error"]["type"])
    return None


async def traffic(url: str, seconds: float, workers: int, max_tokens: int) -> dict[str, int]:
    """Plain, LA and streamed /generate for ``seconds``: status counts."""
    counts: dict[str, int] = {}
    stop = time.monotonic() + seconds

    async def worker(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            n = 0
            while time.monotonic() < stop:
                body: dict[str, Any] = {"prompt": LONG_WRITING[(i + n) % 4], "max_tokens": max_tokens}
                if (i + n) % 3 == 1:
                    body["profile"] = {"principle": "Answer in one short sentence.", "la": {"strength": 2.0}}
                n += 1
                try:
                    r = await c.post("/generate", json=body)
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                counts[key] = counts.get(key, 0) + 1

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return counts


# ---- the vLLM phase ----------------------------------------------------------------------
def vllm_phase(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    log = args.work / "vllm_server.log"
    srv = ServerProcess(["--backend", "vllm", "--model", args.model, "--reward-model", args.reward_model,
                         "--home", args.home,
                         "--db-url", f"sqlite:///{args.work}/vllm.db", "--gpu-memory-utilization", "0.3",
                         "--reward-gpu-memory-utilization", "0.08", "--kv-cache-blocks", str(args.kv_blocks),
                         "--max-model-len", "4096", "--drain-timeout", "10", "--max-queue", "256"],
                        args.port, log)
    try:
        res["ready_s"] = round(srv.wait_ready(400), 1)
        url = srv.url
        t0 = time.monotonic()  # /readyz is 200 once the generator is up; the reward model loads after it
        while time.monotonic() - t0 < 300:
            ready = httpx.get(f"{url}/readyz").json()
            if ready.get("reward_model_state") != "loading":
                break
            time.sleep(1)
        res["reward_ready_s"] = round(res["ready_s"] + time.monotonic() - t0, 1)
        res["readyz"] = {k: ready.get(k) for k in ("status", "reward_model", "reward_model_state")}
        res["kv_budget"] = asyncio.run(kv_budget(url, args.kv_blocks * 16))
        res["memory_pressure"] = memory_pressure(url)
        res["kill_reward_model"] = asyncio.run(kill_reward(url, srv.proc.pid))
        res["kill_generator"] = asyncio.run(kill_generator(url, srv))
    finally:
        if srv.proc.poll() is None:
            res["shutdown"] = srv.stop(60)
        res["log_tail"] = srv.log_tail(15)
    kv, mp, kr, kg = (res.get(k, {}) for k in ("kv_budget", "memory_pressure", "kill_reward_model",
                                               "kill_generator"))
    res["ok"] = all(bool(x.get("ok")) for x in (kv, mp, kr, kg))
    return res


async def kv_budget(url: str, kv_tokens: int) -> dict[str, Any]:
    long_prompt = "Summarise this text. " + " ".join(f"word{i % 97}" for i in range(800))
    out: dict[str, Any] = {"kv_tokens": kv_tokens}
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        tok = await c.post("/v1/completions", json={"model": "x", "prompt": long_prompt, "max_tokens": 1})
        out["long_prompt_tokens"] = tok.json().get("usage", {}).get("prompt_tokens") if tok.status_code == 200 else None
        side = asyncio.create_task(traffic(url, 20, 8, 64))
        await asyncio.sleep(3)
        t0 = time.monotonic()
        la = await c.post("/generate", json={"prompt": long_prompt, "max_tokens": 1024,
                                             "profile": {"principle": "Answer in one short sentence."}})
        out["la_pair_too_large"] = {"status": la.status_code, "type": error_type(la),
                                    "seconds": round(time.monotonic() - t0, 3), "message": la.text[:300]}
        t0 = time.monotonic()
        plain = await c.post("/generate", json={"prompt": long_prompt, "max_tokens": 1024})
        out["plain_same_size"] = {"status": plain.status_code, "seconds": round(time.monotonic() - t0, 2)}
        la_ok = await c.post("/generate", json={"prompt": long_prompt, "max_tokens": 64,
                                                "profile": {"principle": "Answer in one short sentence."}})
        out["la_pair_that_fits"] = {"status": la_ok.status_code}
        out["traffic_beside"] = await side
    out["ok"] = (out["la_pair_too_large"]["status"] == 413 and out["la_pair_too_large"]["type"] == "exceeds_kv_budget"
                 and out["la_pair_too_large"]["seconds"] < 2 and plain.status_code == 200 and la_ok.status_code == 200
                 and set(out["traffic_beside"]) == {"200"})
    return out


def memory_pressure(url: str) -> dict[str, Any]:
    h = hog(0.5, 40)
    try:
        counts = asyncio.run(traffic(url, 20, 16, 128))
        score = httpx.post(f"{url}/score", json={"prompt": "Why is the sky blue?", "method": "reward_model",
                                                 "responses": ["Rayleigh scattering.", "No idea."]}, timeout=60)
    finally:
        h.kill()
        h.wait()
    return {"traffic": counts, "score_reward_model": score.status_code,
            "ok": set(counts) == {"200"} and score.status_code == 200}


async def kill_reward(url: str, server_pid: int) -> dict[str, Any]:
    cores = engine_cores(server_pid)
    out: dict[str, Any] = {"engine_cores": cores}
    if len(cores) < 2:
        out["ok"] = False
        out["error"] = "expected two engine cores (generator, reward model)"
        return out
    victim = cores[1][0]  # the reward model's engine core started second
    body = {"prompt": "Why is the sky blue?", "method": "reward_model",
            "responses": ["Rayleigh scattering.", "No idea."]}
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        out["before"] = (await c.post("/score", json=body)).status_code
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        first_503 = None
        while time.monotonic() - t0 < 30:
            r = await c.post("/score", json=body)
            if r.status_code == 503:
                first_503 = {"seconds": round(time.monotonic() - t0, 2), "type": error_type(r)}
                break
            await asyncio.sleep(0.1)
        out["score_after_kill"] = first_503
        ready = await c.get("/readyz")
        out["readyz"] = {"status_code": ready.status_code,
                         "reward_model_state": ready.json().get("reward_model_state")}
        gen = await c.post("/generate", json={"prompt": "Say hello.", "max_tokens": 16})
        judge = await c.post("/score", json={"prompt": "Say hello.", "method": "judge",
                                             "responses": ["Hello!", "Go away."],
                                             "profile": {"rubric": "Is the response polite?"}})
        out["generate_after"], out["judge_after"] = gen.status_code, judge.status_code
    await asyncio.sleep(2)
    out["victim_alive"] = victim in tree(server_pid)
    out["ok"] = (first_503 is not None and first_503["type"] == "reward_model_unavailable"
                 and ready.status_code == 200 and gen.status_code == 200 and judge.status_code == 200)
    return out


async def kill_generator(url: str, srv: ServerProcess) -> dict[str, Any]:
    cores = engine_cores(srv.proc.pid)
    out: dict[str, Any] = {"engine_cores": cores}
    if not cores:
        return {**out, "ok": False, "error": "no engine core found"}
    victim = cores[0][0]
    server_tree = tree(srv.proc.pid)
    results: list[dict[str, Any]] = []
    killed_at: list[float] = []

    async def streamed(c: httpx.AsyncClient, i: int) -> None:
        rec: dict[str, Any] = {"kind": "stream", "tokens": 0}
        try:
            async with c.stream("POST", "/generate", json={"prompt": LONG_WRITING[i % 4], "max_tokens": 1024,
                                                           "stream": True}) as r:
                rec["status"] = r.status_code
                async for line in r.aiter_lines():
                    if line.startswith("event: token"):
                        rec["tokens"] += 1
                    elif line.startswith("event: error"):
                        rec["outcome"] = "error_event"
                    elif line.startswith("data:") and rec.get("outcome") == "error_event" and "error_type" not in rec:
                        with contextlib.suppress(Exception):
                            rec["error_type"] = json.loads(line[5:])["type"]
                    elif line.startswith("event: done"):
                        rec["outcome"] = "done"
        except httpx.HTTPError as exc:
            rec["outcome"] = type(exc).__name__
        rec["t"] = time.monotonic()
        results.append(rec)

    async def plain(c: httpx.AsyncClient, i: int, delay: float) -> None:
        await asyncio.sleep(delay)
        rec: dict[str, Any] = {"kind": "json"}
        try:
            r = await c.post("/generate", json={"prompt": LONG_WRITING[i % 4], "max_tokens": 1024})
            rec.update(status=r.status_code, outcome=error_type(r) or "ok")
        except httpx.HTTPError as exc:
            rec["outcome"] = type(exc).__name__
        rec["t"] = time.monotonic()
        results.append(rec)

    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        tasks = [asyncio.create_task(streamed(c, i)) for i in range(24)]
        tasks += [asyncio.create_task(plain(c, i, 0.05 * i)) for i in range(40)]  # 5120 KV tokens: many queue
        await asyncio.sleep(4.0)
        in_flight = sum(not t.done() for t in tasks)
        os.kill(victim, signal.SIGKILL)
        killed_at.append(time.monotonic())
        # out of rotation: /readyz says 503 while the server drains, or the process is gone already
        # (on the H200 it drained and exited ~0.3 s after the kill, before a first poll saw 503)
        ready_503 = exited = None
        while time.monotonic() - killed_at[0] < 15:
            if srv.proc.poll() is not None:
                exited = round(time.monotonic() - killed_at[0], 2)
                break
            with contextlib.suppress(httpx.HTTPError):
                r = await c.get("/readyz", timeout=2)
                if r.status_code == 503:
                    ready_503 = round(time.monotonic() - killed_at[0], 2)
                    break
            await asyncio.sleep(0.05)
        done, pending = await asyncio.wait(tasks, timeout=30)
        for t in pending:
            t.cancel()
    k = killed_at[0]
    after = [r for r in results if r["t"] >= k]
    out.update(in_flight_at_kill=in_flight, finished_before_kill=len(results) - len(after),
               failed_after_kill=len(after), hung=len(pending), readyz_503_s=ready_503,
               outcomes={}, fail_s_max=round(max((r["t"] - k for r in after), default=0.0), 2))
    for r in after:
        key = f"{r['kind']}:{r.get('status')}:{r.get('error_type') or r.get('outcome')}"
        out["outcomes"][key] = out["outcomes"].get(key, 0) + 1
    try:
        code: int | None = srv.proc.wait(60)
    except subprocess.TimeoutExpired:
        code = None
    out["exit_code"] = code
    out["exit_s"] = exited  # seconds from the kill to the exit, when seen inside the 15 s window
    out["exited_within_s"] = exited if exited is not None else round(time.monotonic() - k, 1)  # an upper bound
    leftover: dict[int, int] = {}
    for _ in range(20):
        apps = gpu_apps()
        leftover = {p: m for p, m in apps.items() if p in server_tree}
        if not leftover:
            break
        time.sleep(0.5)
    out["gpu_memory_left_by_server_tree_mib"] = leftover
    bad = [key for key in out["outcomes"] if not (key.endswith("engine_unavailable") or ":done" in key
                                                 or key.endswith(":ok"))]
    out["unexpected_outcomes"] = bad
    out["out_of_rotation_s"] = min((x for x in (ready_503, exited) if x is not None), default=None)
    out["ok"] = generator_kill_ok(out)
    return out


def generator_kill_ok(out: dict[str, Any]) -> bool:
    """The engine core's death is handled: requests were in flight, none hung, each ended in a typed
    error (or finished), the server left rotation within 5 s (503 on /readyz, or gone), exited 70
    for its supervisor and left no GPU memory behind."""
    rot = out.get("out_of_rotation_s")
    return (out["in_flight_at_kill"] > 0 and out["hung"] == 0 and not out["unexpected_outcomes"]
            and rot is not None and rot <= 5 and out["exit_code"] == 70
            and not out["gpu_memory_left_by_server_tree_mib"])


# ---- the transformers phase --------------------------------------------------------------
def transformers_oom(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    log = args.work / "tf_server.log"
    srv = ServerProcess(["--backend", "transformers", "--device", "cuda", "--dtype", "float32", "--model", args.model,
                         "--home", args.home, "--db-url", f"sqlite:///{args.work}/tf.db", "--reward-model", "none",
                         "--max-model-len", "8192", "--max-batch-size", "4"], args.port + 1, log)
    long_prompt = "Summarise this text. " + " ".join(f"word{i % 97}" for i in range(1800))
    try:
        res["ready_s"] = round(srv.wait_ready(300), 1)
        url = srv.url
        warm = httpx.post(f"{url}/generate", json={"prompt": "Say hello.", "max_tokens": 8}, timeout=120)
        res["warm"] = warm.status_code
        h = hog(0.1, 120)
        try:
            async def batch() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                    reqs = [c.post("/generate", json={"prompt": long_prompt, "max_tokens": 8})]
                    reqs += [c.post("/generate", json={"prompt": p, "max_tokens": 16}) for p in LONG_WRITING[:3]]
                    return list(await asyncio.gather(*reqs))

            rs = asyncio.run(batch())
            res["under_pressure"] = [{"status": r.status_code, "type": error_type(r)} for r in rs]
            after = httpx.post(f"{url}/generate", json={"prompt": "Say hello.", "max_tokens": 8}, timeout=120)
            res["short_after"] = after.status_code
        finally:
            h.kill()
            h.wait()
        again = httpx.post(f"{url}/generate", json={"prompt": long_prompt, "max_tokens": 8}, timeout=120)
        res["long_after_release"] = again.status_code
        res["readyz_after"] = httpx.get(f"{url}/readyz").status_code
    finally:
        res["shutdown"] = srv.stop(60)
        res["log_tail"] = srv.log_tail(10)
    up = res.get("under_pressure", [])
    res["ok"] = bool(up) and (up[0]["status"], up[0]["type"]) == (503, "out_of_memory") and all(
        u["status"] == 200 for u in up[1:]) and res.get("short_after") == 200 and res.get("long_after_release") == 200
    return res


# ---- report ------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    lines = ["# Fault runs on the GPU: KV budget, memory pressure, engine-core death, CUDA OOM", ""]
    for phase, res in report["phases"].items():
        lines += [f"## {phase}: {'ok' if res.get('ok') else 'NOT ok'} ({res.get('wall_s')} s)", ""]
        for key, val in res.items():
            if key in ("ok", "wall_s", "log_tail"):
                continue
            text = json.dumps(val, default=str)
            lines.append(f"- **{key}**: `{text[:900]}`")
        lines.append("")
    return "\n".join(lines) + "\n"
