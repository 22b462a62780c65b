"""Bounded load test of a running alignserve (loopback or the project's own hosts only).

Ramps concurrency through the given levels, each for an equal share of --duration, sending
/generate requests (half with a Linear-Alignment profile). With --mix the traffic is what a
dashboard should show: a stored profile (created first), adaptive and fixed Linear Alignment,
non-English prompts under a language-enforcing profile, /score with the judge and the English
reward model, and a few invalid requests (counted as expected 422s, not failures). Reports throughput, latency
percentiles, status counts, requests that hung past --hang-after, and server memory (RSS and GPU)
read from /metrics at start and end. Every loop is bounded in count and time and stops by itself.

    python -m bench.load --url http://127.0.0.1:8000 --levels 1,4,16,32 --duration 60 \
        --device "NVIDIA H100 80GB HBM3 (transformers backend, bf16)" --out bench/results/load_h100_transformers

Prints the markdown table; with --out also writes <out>.json and <out>.md (naming --device, the
command, date and git revision). Exits 1 if any request got a 5xx or hung.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from bench.harness import Provenance, metric_values, reproduce_command, write_files

PROMPTS = ["Why is the sky blue?", "Give me a tip for learning to cook.", "What does a compiler do?",
           "Write a haiku about autumn.", "Explain recursion to a child.", "What is a hash map?"]
PROFILE = {"principle": "Answer in one short sentence.", "la": {"strength": 3.0}}
STORED = {"name": "concise", "principle": "Answer in one short sentence.", "la": {"adaptive": True},
          "rubric": "Is the answer short and to the point?"}
FOREIGN = ["Pourquoi le ciel est-il bleu ?", "¿Qué hace un compilador?", "Was ist eine Hashtabelle?"]
ENFORCE = {"enforce_language": True, "la": {"strength": 2.0}}
CANDIDATES = ["Rayleigh scattering: short wavelengths scatter more.",
              "Well, that is a long story involving the atmosphere, sunlight and many other things."]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Stage:
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    hung: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)) if lat else (lambda q: None)
        ok = self.statuses.get("200", 0)
        return {"concurrency": self.concurrency, "requests": sum(self.statuses.values()) + self.hung,
                "ok": ok, "statuses": dict(sorted(self.statuses.items())), "hung": self.hung,
                "req_per_s": round(ok / self.wall_s, 2) if self.wall_s else 0.0,
                "tokens_per_s": round(self.tokens / self.wall_s, 1) if self.wall_s else 0.0,
                "p50_s": pct(0.5), "p99_s": pct(0.99),
                "mean_s": round(statistics.fmean(lat), 3) if lat else None}


# Idle pooled connections are dropped by the client this long after their last response, well before
# the server's keep-alive timeout (5 s by default) closes them: else a request can be written into a
# connection the server is closing at that instant ("Server disconnected without sending a response";
# an unguarded periodic read ended the first 10-minute H200 soak after 4.5 minutes with this).
KEEPALIVE_EXPIRY_S = 2.0

def memory_of(exposition: str) -> dict[str, float]:
    """The server's RSS and GPU memory from its Prometheus exposition."""
    names = ("process_resident_memory_bytes", "alignserve_gpu_memory_allocated_bytes")
    return {k: v for k, v in metric_values(exposition, "").items() if k in names}


async def memory(client: httpx.AsyncClient) -> dict[str, float]:
    return memory_of((await client.get("/metrics")).text)


def plain_request(rng: random.Random, max_tokens: int) -> tuple[str, dict]:
    body: dict = {"prompt": rng.choice(PROMPTS), "max_tokens": max_tokens}
    if rng.random() < 0.5:
        body["profile"] = PROFILE
    return "/generate", body


def mixed_request(rng: random.Random, max_tokens: int) -> tuple[str, dict]:
    """One request of the --mix workload; invalid ones (max_tokens 0) must come back 422."""
    u = rng.random()
    if u < 0.35:
        return plain_request(rng, max_tokens)
    if u < 0.55:
        return "/generate", {"prompt": rng.choice(PROMPTS), "max_tokens": max_tokens, "profile": STORED["name"]}
    if u < 0.70:
        return "/generate", {"prompt": rng.choice(FOREIGN), "max_tokens": max_tokens, "profile": ENFORCE}
    if u < 0.95:
        method = rng.choice(["judge", "reward_model"])
        body: dict = {"prompt": PROMPTS[0], "responses": CANDIDATES, "method": method}
        if method == "judge":
            body["profile"] = STORED["name"]
        return "/score", body
    return "/generate", {"prompt": rng.choice(PROMPTS), "max_tokens": 0}


async def run_stage(client: httpx.AsyncClient, stage: Stage, seconds: float, max_tokens: int,
                    hang_after: float, rng: random.Random, mix: bool = False) -> None:
    end = time.monotonic() + seconds

    async def user() -> None:
        while time.monotonic() < end:
            path, body = mixed_request(rng, max_tokens) if mix else plain_request(rng, max_tokens)
            t0 = time.monotonic()
            try:
                r = await client.post(path, json=body, timeout=hang_after)
            except httpx.TimeoutException:
                stage.hung += 1
                continue
            except httpx.TransportError as exc:
                stage.statuses[type(exc).__name__] = stage.statuses.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.1)
                continue
            stage.statuses[str(r.status_code)] = stage.statuses.get(str(r.status_code), 0) + 1
            if r.status_code == 200 and path == "/generate":
                stage.latencies.append(time.monotonic() - t0)
                stage.tokens += r.json()["usage"]["completion_tokens"]
            elif r.status_code == 429:
                await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", "1"))) * rng.random())

    t0 = time.monotonic()
    await asyncio.gather(*(user() for _ in range(stage.concurrency)))
    stage.wall_s = time.monotonic() - t0


async def ensure_profile(client: httpx.AsyncClient) -> None:
    r = await client.post("/profiles", json=STORED)
    if r.status_code not in (201, 409):
        raise SystemExit(f"could not create profile {STORED['name']!r}: {r.status_code} {r.text}")


async def run(url: str, levels: list[int], duration: float, max_tokens: int, hang_after: float,
              seed: int = 0, mix: bool = False) -> dict:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=max(levels) + 4, keepalive_expiry=KEEPALIVE_EXPIRY_S)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=hang_after) as client:
        ready = await client.get("/readyz")
        if ready.status_code != 200:
            raise SystemExit(f"server not ready: {ready.text}")
        mem_start = await memory(client)
        if mix:
            await ensure_profile(client)
        stages = [Stage(c) for c in levels]
        for st in stages:
            await run_stage(client, st, duration / len(levels), max_tokens, hang_after, rng, mix)
            print(json.dumps(st.summary()), file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)
        mem_end = await memory(client)
        info = ready.json()
    rows = [s.summary() for s in stages]
    total_5xx = sum(n for s in rows for code, n in s["statuses"].items() if code.startswith("5"))
    return {"url": url, "model": info.get("model"), "backend": info.get("backend"), "levels": levels, "mix": mix,
            "duration_s": duration, "max_tokens": max_tokens, "stages": rows,
            "total_5xx": total_5xx, "total_hung": sum(s["hung"] for s in rows),
            "memory_start": mem_start, "memory_end": mem_end}


def markdown(result: dict, device: str, command: str) -> str:
    rss0 = result["memory_start"].get("process_resident_memory_bytes", 0) / 2**20
    rss1 = result["memory_end"].get("process_resident_memory_bytes", 0) / 2**20
    gpu0 = result["memory_start"].get("alignserve_gpu_memory_allocated_bytes", 0) / 2**20
    gpu1 = result["memory_end"].get("alignserve_gpu_memory_allocated_bytes", 0) / 2**20
    traffic = ("mixed traffic (/generate with stored, inline, adaptive and language profiles; /score; ~5 % "
               "invalid requests, expected 422; latency and tokens are /generate's)") if result.get("mix") \
        else "half the requests with Linear Alignment"
    lines = [f"# Load test on {device}", "", f"Backend `{result['backend']}`, model `{result['model']}`, "
             f"max_tokens={result['max_tokens']}, {traffic}. Reproduce: `{command}`.",
             "", "| concurrency | requests | ok | statuses | hung | req/s | tokens/s | p50 s | p99 s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in result["stages"]:
        lines.append(f"| {s['concurrency']} | {s['requests']} | {s['ok']} | {s['statuses']} | {s['hung']} | "
                     f"{s['req_per_s']} | {s['tokens_per_s']} | {s['p50_s']} | {s['p99_s']} |")
    lines += ["", f"5xx: {result['total_5xx']}, hung: {result['total_hung']}. Server RSS {rss0:.0f} → "
              f"{rss1:.0f} MiB; GPU memory allocated {gpu0:.0f} → {gpu1:.0f} MiB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the server (loopback only)")
    ap.add_argument("--levels", default="1,4,16,32", help="concurrency levels, ramped in order")
    ap.add_argument("--duration", type=float, default=60.0, help="total seconds over all levels")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each /generate")
    ap.add_argument("--hang-after", type=float, default=120.0, help="a request slower than this counts as hung")
    ap.add_argument("--device", default="unknown", help="device label for the report")
    ap.add_argument("--mix", action="store_true",
                    help="mixed traffic: stored profile, adaptive LA, non-English prompts, /score, invalid requests")
    ap.add_argument("--out", type=Path, help="write <out>.json/.md, e.g. bench/results/load_h100_transformers")
    args = ap.parse_args(argv)
    if urlparse(args.url).hostname not in LOCAL_HOSTS:
        raise SystemExit("refusing to load a non-loopback address")
    levels = [int(x) for x in args.levels.split(",")]
    result = asyncio.run(run(args.url, levels, args.duration, args.max_tokens, args.hang_after, mix=args.mix))
    command = reproduce_command(None if argv is None else [__file__, *argv])
    md = markdown(result, args.device, command)
    print(md)
    if args.out:
        write_files(args.out.with_suffix(""), result, md, Provenance.collect(args.device, command))
    return 0 if result["total_5xx"] == 0 and result["total_hung"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
