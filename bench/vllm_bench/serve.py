"""`alignserve serve --backend vllm` end to end: the real server process, driven over HTTP.

Two phases, usually on two machines:

    # here (CPU, transformers engine): compile the French-answer Activation-RM profile into a DB
    python -m bench.vllm_bench serve prepare --db /tmp/vllm_serve/profiles.db
    # on the GPU host: start the vLLM-backed server on that DB and check the API, then load it
    python -m bench.vllm_bench serve run --model /tmp/ahome/models/qwen2.5-coder-0.5b-instruct/hf \\
        --db /tmp/vllm_serve/profiles.db --out bench/results

``run`` checks, through HTTP only: plain, Linear-Alignment, steered (stored compiled profile) and
streamed generations; /score with the judge and the Activation RM; a client that disconnects
mid-stream (the engine must drop the request); bad input (4xx, never 5xx); the engine's stats on
/metrics; then a load ramp (bench/load.py: half the requests with LA) with /metrics sampled
during it, optionally the same ramp on the transformers backend, and SIGTERM (drain and exit).
Writes ``vllm_serve_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Provenance, ServerProcess, metric_values
from bench.load import run as run_load

from .common import DATA, provenance, write

FRENCH = DATA / "french_profile.json"
PROMPTS = ["What is the capital of Italy?", "How do plants make food?", "Name a use of copper."]
PHASES = {
    "prepare": "compile the French profile into --db over HTTP (CPU, transformers engine)",
    "run": "serve with --backend vllm on a copy of --db, check the API, load it, SIGTERM",
}
DEFAULT = ("run",)
PORTS = {"prepare": 18090, "run": 18091}


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--db", type=Path, required=True,
                    help="profile DB: written by prepare, copied (not modified) by run")
    ap.add_argument("--model", default=None, help="run: HF model folder (required for run)")
    ap.add_argument("--port", type=int, default=None, help="server port (default 18090 prepare, 18091 run)")
    ap.add_argument("--levels", default="1,8,64", help="run: load concurrency levels (default %(default)s)")
    ap.add_argument("--duration", type=float, default=45.0, help="run: seconds of load over all levels (default 45)")
    ap.add_argument("--max-tokens", type=int, default=128, help="run: max_tokens under load (default %(default)s)")
    ap.add_argument("--compare-transformers", action="store_true",
                    help="run: repeat the load on the transformers backend")


def run(args: argparse.Namespace, phases: list[str]) -> int:
    code = 0
    for phase in phases:
        port = args.port or PORTS[phase]
        if phase == "prepare":
            prepare(args.db, port)
        else:
            code = max(code, serve_run(args, port))
    return code


# ---- prepare (CPU) -------------------------------------------------------------------------
def prepare(db: Path, port: int) -> None:
    d = json.loads(FRENCH.read_text())
    examples = [{"prompt": q, "response": fr, "label": "good"} for q, fr, _ in d["train"]]
    examples += [{"prompt": q, "response": en, "label": "bad"} for q, _, en in d["train"]]
    db.parent.mkdir(parents=True, exist_ok=True)
    log = db.with_suffix(".prepare.log")
    with ServerProcess(["--db-url", f"sqlite:///{db}"], port, log) as srv:
        url = srv.url
        srv.wait_ready(600)
        body = {"name": "french", "rubric": d["rubric"],
                "activation_rm": {"examples": examples, "num_heads": 16, "iterations": 30, "steer_strength": 4.0}}
        r = httpx.post(f"{url}/profiles", json=body, timeout=60)
        r.raise_for_status()
        job = r.json()["id"]
        t0 = time.monotonic()
        while True:
            st = httpx.get(f"{url}/jobs/{job}", timeout=10).json()
            print(f"  compile {st['status']} {st['phase']} {st['done']}/{st['total']}", flush=True)
            if st["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(10)
        if st["status"] != "succeeded":
            raise SystemExit(f"compile {st['status']}: {st.get('error')}")
        print(f"compiled in {time.monotonic() - t0:.0f}s into {db}")


# ---- run (GPU) -----------------------------------------------------------------------------
class Checks:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: Any) -> None:
        self.rows.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {json.dumps(detail, ensure_ascii=False)[:300]}", flush=True)


def gen(c: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = c.post("/generate", json=body)
    return {"status": r.status_code, **(r.json() if r.headers.get("content-type", "").startswith("application/json")
                                        else {"body": r.text[:200]})}


def stream(c: httpx.Client, body: dict[str, Any], stop_after: int | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    events: list[tuple[str, Any]] = []
    first = None
    with c.stream("POST", "/generate", json={**body, "stream": True}) as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event or "", json.loads(line[6:])))
                if event == "token" and first is None:
                    first = time.perf_counter() - t0
                if stop_after is not None and sum(e == "token" for e, _ in events) >= stop_after:
                    break  # leaving the block closes the connection mid-stream
    done = [d for e, d in events if e == "done"]
    return {"status": r.status_code, "tokens": sum(e == "token" for e, _ in events), "first_token_s": first,
            "text": "".join(d.get("text", "") for e, d in events if e == "token"),
            "done": done[0] if done else None, "events": [e for e, _ in events][-3:]}


def api_checks(url: str, checks: Checks) -> None:
    from service.language.fidelity import LanguageDetector

    lang = LanguageDetector()
    with httpx.Client(base_url=url, timeout=120) as c:
        r = gen(c, {"prompt": PROMPTS[0], "max_tokens": 32})
        checks.add("plain /generate", r["status"] == 200 and r["usage"]["completion_tokens"] > 0,
                   {"text": r.get("text"), "usage": r.get("usage")})
        la = {"principle": "Answer in one short sentence, in French.", "la": {"strength": 3.0}}
        r = gen(c, {"prompt": PROMPTS[1], "max_tokens": 48, "profile": la})
        checks.add("LA /generate (inline profile)",
                   r["status"] == 200 and "linear_alignment" in r["alignment"]["method"],
                   {"text": r.get("text"), "alignment": r.get("alignment")})
        stored = c.get("/profiles/french").json()
        checks.add("compiled profile present", bool(stored.get("compiled")), {"compiled": stored.get("compiled")})
        outs: dict[float, dict[str, Any]] = {}
        for strength in (0.0, 4.0):
            texts = []
            for q in PROMPTS:
                r = gen(c, {"prompt": q, "max_tokens": 40, "profile": "french", "steer_strength": strength})
                texts.append((r.get("text", ""), r.get("alignment", {}).get("method")))
            outs[strength] = {"french": sum(lang.detect(t) == "fr" for t, _ in texts), "of": len(texts),
                              "methods": sorted({m for _, m in texts if m}), "texts": [t for t, _ in texts]}
        changed = sum(a != b for a, b in zip(outs[0.0]["texts"], outs[4.0]["texts"], strict=True))
        checks.add("steered /generate (stored profile, strength 4 vs 0)",
                   changed >= 2 and outs[0.0]["methods"] == ["none"]
                   and outs[4.0]["methods"] == ["activation_steering"], {"changed": changed, **outs})
        s = stream(c, {"prompt": PROMPTS[2], "max_tokens": 48, "profile": la})
        checks.add("streamed LA /generate (SSE)", s["status"] == 200 and s["done"] is not None and s["tokens"] > 1
                   and s["done"]["text"] == s["text"],
                   {k: s[k] for k in ("tokens", "first_token_s", "events", "text")})
        d = json.loads(FRENCH.read_text())
        q, fr, en = d["test"][0]
        for method in ("judge", "activation_rm"):
            body: dict[str, Any] = {"prompt": q, "responses": [en, fr], "method": method}
            body.update({"profile": "french"} if method == "activation_rm" else {"rubric": d["rubric"]})
            resp = c.post("/score", json=body)
            checks.add(f"/score {method}", resp.status_code == 200 and len(resp.json()["scores"]) == 2, resp.json())
        before = metric_values(c.get("/metrics").text)
        s = stream(c, {"prompt": "Count from 1 to 2000, one number per line.", "max_tokens": 1000}, stop_after=5)
        t0 = time.monotonic()
        after: dict[str, float] = {}
        while time.monotonic() - t0 < 10:
            after = metric_values(c.get("/metrics").text)
            if (after.get("alignserve_engine_running_sequences") == 0
                    and after.get("alignserve_engine_live_requests") == 0):
                break
            time.sleep(0.1)
        key = 'alignserve_generations_total{finish_reason="cancelled"}'
        checks.add("client disconnect mid-stream frees the engine",
                   after.get("alignserve_engine_running_sequences") == 0 and after.get(key, 0) > before.get(key, 0),
                   {"tokens_read": s["tokens"], "freed_after_s": round(time.monotonic() - t0, 2),
                    "cancelled_total": after.get(key)})
        bad = {"too long": {"prompt": "word " * 20000, "max_tokens": 8},
               "bad temperature": {"prompt": "hi", "temperature": -1},
               "unknown profile": {"prompt": "hi", "profile": "nope"},
               "max_tokens over limit": {"prompt": "hi", "max_tokens": 10**6}}
        codes = {k: c.post("/generate", json=v).status_code for k, v in bad.items()}
        checks.add("bad input -> 4xx", all(400 <= v < 500 for v in codes.values()), codes)
        m = metric_values(c.get("/metrics").text, "alignserve_engine_")
        checks.add("vLLM engine stats on /metrics", "alignserve_engine_kv_cache_usage_ratio" in m
                   and m.get("alignserve_engine_prefix_cache_queries_total", 0) > 0, m)


async def sample_metrics(url: str, stop: asyncio.Event, out: list[dict[str, float]]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as c:
        while not stop.is_set():
            with contextlib.suppress(httpx.TransportError):
                out.append({"t": time.monotonic(), **metric_values((await c.get("/metrics")).text, "alignserve_")})
            await asyncio.sleep(0.5)


async def loaded(url: str, levels: list[int], duration: float,
                 max_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
    stop = asyncio.Event()
    samples: list[dict[str, float]] = []
    sampler = asyncio.create_task(sample_metrics(url, stop, samples))
    result = await run_load(url, levels, duration, max_tokens, hang_after=120)
    stop.set()
    await sampler
    keys = ("alignserve_engine_running_sequences", "alignserve_engine_waiting_sequences",
            "alignserve_engine_kv_cache_usage_ratio", "alignserve_queue_depth", "alignserve_engine_live_requests")
    peak = {k: max((s.get(k, 0.0) for s in samples), default=None) for k in keys}
    last = samples[-1] if samples else {}
    peak["alignserve_engine_preemptions_total"] = last.get("alignserve_engine_preemptions_total")
    q = last.get("alignserve_engine_prefix_cache_queries_total")
    h = last.get("alignserve_engine_prefix_cache_hits_total")
    peak["prefix_cache_hit_rate"] = round(h / q, 3) if q and h is not None else None
    return result, peak


def markdown(res: dict[str, Any], prov: Provenance) -> str:
    lines = [f"# `alignserve serve --backend vllm` end to end — {prov.device}", "",
             f"Model `{res['model']}`; server ready {res['ready_s']:.0f} s after start (vLLM load, compile, "
             f"CUDA graphs). Reproduce: `{prov.command}` (after `{res['prepare']}` on any machine).", "",
             "| check | ok | detail |", "|---|---|---|"]
    for r in res["checks"]:
        detail = json.dumps(r["detail"], ensure_ascii=False).replace("|", "/")
        lines.append(f"| {r['check']} | {'yes' if r['ok'] else '**no**'} | {detail[:220]} |")
    for name, load in res["loads"].items():
        lines += ["", f"## Load over HTTP: {name} (bench/load.py, half the requests LA r=3, "
                  f"max_tokens={load['result']['max_tokens']})", "",
                  "| concurrency | ok | statuses | req/s | tokens/s | p50 s | p99 s |", "|---|---|---|---|---|---|---|"]
        for s in load["result"]["stages"]:
            lines.append(f"| {s['concurrency']} | {s['ok']} | {s['statuses']} | {s['req_per_s']} | "
                         f"{s['tokens_per_s']} | {s['p50_s']} | {s['p99_s']} |")
        lines += ["", "Sampled from /metrics during the load (peaks; counters at the end): "
                  + ", ".join(f"`{k}` {v}" for k, v in load["peak"].items())]
    lines += ["", f"SIGTERM: {res['shutdown']}"]
    return "\n".join(lines) + "\n"


def serve_run(args: argparse.Namespace, port: int) -> int:
    if not args.model:
        raise SystemExit("serve run needs --model (the HF folder the vLLM server loads)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "vllm_serve.server.log"
    db = out / "vllm_serve.profiles.db"  # a copy: the prepared DB stays as it was
    shutil.copyfile(args.db, db)
    prov = provenance()
    srv = ServerProcess(["--backend", "vllm", "--model", args.model, "--db-url", f"sqlite:///{db}",
                         "--max-num-seqs", "256", "--max-queue", "256", "--max-model-len", "4096"], port, log)
    url = srv.url
    res: dict[str, Any] = {"model": args.model, "loads": {},
                           "prepare": "python -m bench.vllm_bench serve prepare --db DB"}
    checks = Checks()
    try:
        res["ready_s"] = srv.wait_ready(900)
        api_checks(url, checks)
        levels = [int(x) for x in args.levels.split(",")]
        result, peak = asyncio.run(loaded(url, levels, args.duration, args.max_tokens))
        res["loads"]["vllm"] = {"result": result, "peak": peak}
        print(json.dumps(res["loads"]["vllm"]["peak"]), flush=True)
    finally:
        res["shutdown"] = srv.stop()
        res["checks"] = checks.rows
    if args.compare_transformers:
        with ServerProcess(["--backend", "transformers", "--model", args.model, "--db-url", f"sqlite:///{db}",
                            "--max-batch-size", "64", "--max-queue", "256"], port,
                           out / "vllm_serve.transformers.log") as srv:
            srv.wait_ready(600)
            result, peak = asyncio.run(loaded(url, levels, args.duration, args.max_tokens))
            res["loads"]["transformers (same host, batch 64)"] = {"result": result, "peak": peak}
    write(out, "vllm_serve", res, markdown(res, prov), prov)
    return 0 if all(r["ok"] for r in checks.rows) else 1
