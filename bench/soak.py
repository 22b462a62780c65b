"""Soak test of a running alignserve: sustained mixed traffic past capacity, faults included.

For --duration seconds, --concurrency clients (set it to about twice what the server decodes at
once) send a mix of plain and Linear-Alignment generations, stored and compiled profiles, streamed
generations, clients that disconnect mid-stream, /score with the judge, the Activation RM and the
English reward model, and ~5 % invalid requests (expected 4xx). A third of the way in, one
Activation-RM profile compile is started and followed to its end (past the traffic, up to
--hang-after); once it succeeds, steered generations and activation_rm scoring join the mix.
Every --sample-every seconds the server's RSS and GPU memory are read from /metrics; the report
gives their least-squares slope (MiB per minute), p50/p99
latency per route, status counts, 5xx and requests that hung past --hang-after. Loopback only;
every loop is bounded in time and stops by itself. Exit status 1 on any 5xx, hung request, error
event in a stream or transport error (a connection the server dropped; idempotent reads retry once).

Usage: python -m bench.soak --url http://127.0.0.1:8000 --duration 600 --concurrency 64 --out bench/results/soak_x
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from bench.harness import Provenance, cpu_model_name, reproduce_command, write_files
from bench.load import CANDIDATES, FOREIGN, KEEPALIVE_EXPIRY_S, LOCAL_HOSTS, PROFILE, PROMPTS, STORED, memory_of

ARM_PROFILE = "soak-french"
ARM_SPEC = {
    "name": ARM_PROFILE, "rubric": "Is the response written in French?", "la": {"enabled": False},
    "activation_rm": {"pairs": [
        {"prompt": p, "chosen": fr, "rejected": en} for p, fr, en in (
            ("Say hello.", "Bonjour !", "Hello!"),
            ("What colour is the sky?", "Le ciel est bleu.", "The sky is blue."),
            ("Name a fruit.", "Une pomme.", "An apple."),
            ("How are you?", "Je vais bien, merci.", "I am fine, thanks."),
        )], "num_heads": 4, "shots_per_context": 2, "iterations": 10, "steer_strength": 2.0},
}


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    hung: int = 0
    disconnects: int = 0
    transport_errors: dict[str, int] = field(default_factory=dict)  # by exception name, all traffic
    memory: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    compile: dict[str, object] = field(default_factory=dict)

    def transport_error(self, exc: Exception) -> None:
        name = type(exc).__name__
        self.transport_errors[name] = self.transport_errors.get(name, 0) + 1

    def record(self, route: str, status: str, seconds: float | None) -> None:
        by = self.statuses.setdefault(route, {})
        by[status] = by.get(status, 0) + 1
        if seconds is not None and status == "200":
            self.latencies.setdefault(route, []).append(seconds)


def pick(rng: random.Random, max_tokens: int, compiled: bool) -> tuple[str, str, dict]:
    """(kind, path, body) of one request; kind names the traffic class in the report."""
    u = rng.random()
    prompt = rng.choice(PROMPTS)
    if u < 0.20:
        return "plain", "/generate", {"prompt": prompt, "max_tokens": max_tokens}
    if u < 0.35:
        return "la", "/generate", {"prompt": prompt, "max_tokens": max_tokens, "profile": PROFILE}
    if u < 0.45:
        return "stored", "/generate", {"prompt": prompt, "max_tokens": max_tokens, "profile": STORED["name"]}
    if u < 0.50:
        return "language", "/generate", {"prompt": rng.choice(FOREIGN), "max_tokens": max_tokens,
                                         "profile": {"enforce_language": True}}
    if u < 0.60:
        return "stream", "/generate", {"prompt": prompt, "max_tokens": max_tokens, "stream": True}
    if u < 0.65:
        return "disconnect", "/generate", {"prompt": prompt, "max_tokens": max_tokens, "stream": True}
    if u < 0.70 and compiled:
        return "steered", "/generate", {"prompt": prompt, "max_tokens": max_tokens, "profile": ARM_PROFILE}
    if u < 0.95:
        method = rng.choice(["judge", "reward_model"] + (["activation_rm"] if compiled else []))
        body: dict = {"prompt": PROMPTS[0], "responses": CANDIDATES, "method": method}
        if method != "reward_model":
            body["profile"] = ARM_PROFILE if method == "activation_rm" else STORED["name"]
        return f"score_{method}", "/score", body
    return "invalid", "/generate", {"prompt": prompt, "max_tokens": 0}


async def one(client: httpx.AsyncClient, tally: Tally, kind: str, path: str, body: dict, hang_after: float,
              rng: random.Random) -> None:
    t0 = time.monotonic()
    try:
        if kind in ("stream", "disconnect"):
            async with client.stream("POST", path, json=body, timeout=hang_after) as r:
                status = str(r.status_code)
                async for chunk in r.aiter_text():
                    if kind == "disconnect" and "event: token" in chunk:
                        tally.disconnects += 1
                        break  # leave mid-stream: the server must cancel the generation
                    if "event: error" in chunk:
                        status = "stream_error"
        else:
            r = await client.post(path, json=body, timeout=hang_after)
            status = str(r.status_code)
            if r.status_code == 429:
                await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", "1"))) * rng.random())
    except httpx.TimeoutException:
        tally.hung += 1
        return
    except httpx.TransportError as exc:
        tally.record(kind, type(exc).__name__, None)
        tally.transport_error(exc)
        await asyncio.sleep(0.1)
        return
    tally.record(kind, status, time.monotonic() - t0)


async def get_once_more(client: httpx.AsyncClient, tally: Tally, path: str) -> httpx.Response | None:
    """GET ``path`` (idempotent: retried once after a transport error); None when both tries fail.
    Every transport error is counted: the report shows them whether or not the retry succeeded."""
    for _ in range(2):
        try:
            return await client.get(path)
        except httpx.TransportError as exc:
            tally.transport_error(exc)
            await asyncio.sleep(0.1)
    return None


async def follow_compile(client: httpx.AsyncClient, tally: Tally, deadline: float) -> None:
    t0 = time.monotonic()
    r = await client.post("/profiles", json=ARM_SPEC)
    tally.compile = {"status_code": r.status_code}
    if r.status_code != 202:
        tally.compile["error"] = r.text[:300]
        return
    job = r.json()["id"]
    while time.monotonic() < deadline:
        await asyncio.sleep(2.0)
        got = await get_once_more(client, tally, f"/jobs/{job}")
        if got is None:
            continue
        j = got.json()
        if j["status"] in ("succeeded", "failed", "cancelled"):
            tally.compile.update({"job": j["status"], "seconds": round(time.monotonic() - t0, 1),
                                  "error": j.get("error")})
            return
    tally.compile["job"] = "still running at the end"


def slope_mib_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, bytes) samples, in MiB per minute."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 60 / 2**20


def percentile(values: list[float], q: float) -> float | None:
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 3) if v else None


async def run(url: str, duration: float, concurrency: int, max_tokens: int, hang_after: float,
              sample_every: float, seed: int = 0, compile_profile: bool = True) -> dict:
    rng = random.Random(seed)
    tally = Tally()
    limits = httpx.Limits(max_connections=concurrency + 8, keepalive_expiry=KEEPALIVE_EXPIRY_S)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=hang_after) as client:
        ready = await client.get("/readyz")
        if ready.status_code != 200:
            raise SystemExit(f"server not ready: {ready.text}")
        r = await client.post("/profiles", json=STORED)
        if r.status_code not in (201, 409):
            raise SystemExit(f"could not create profile {STORED['name']!r}: {r.status_code} {r.text}")
        start = time.monotonic()
        end = start + duration
        compiled = {"done": False}

        async def user() -> None:
            while time.monotonic() < end:
                kind, path, body = pick(rng, max_tokens, compiled["done"])
                await one(client, tally, kind, path, body, hang_after, rng)

        async def sample() -> None:
            got = await get_once_more(client, tally, "/metrics")
            if got is not None:
                tally.memory.append((time.monotonic() - start, memory_of(got.text)))

        async def sampler() -> None:
            while time.monotonic() < end:
                await sample()
                await asyncio.sleep(sample_every)

        async def compiler() -> None:  # followed past the end of traffic, up to --hang-after
            await asyncio.sleep(duration / 3)
            await follow_compile(client, tally, end + hang_after)
            compiled["done"] = tally.compile.get("job") == "succeeded"

        tasks = [user() for _ in range(concurrency)] + [sampler()]
        if compile_profile:
            tasks.append(compiler())
        await asyncio.gather(*tasks)
        await asyncio.sleep(1.0)
        await sample()
        info = ready.json()
    routes = {}
    for kind in sorted(set(tally.statuses) | set(tally.latencies)):
        lat = tally.latencies.get(kind, [])
        routes[kind] = {"statuses": dict(sorted(tally.statuses.get(kind, {}).items())), "ok": len(lat),
                        "p50_s": percentile(lat, 0.5), "p99_s": percentile(lat, 0.99)}
    five = sum(n for by in tally.statuses.values() for code, n in by.items() if code.startswith("5"))
    stream_errors = sum(by.get("stream_error", 0) for by in tally.statuses.values())
    series = {name: [(t, m[name]) for t, m in tally.memory if name in m]
              for name in ("process_resident_memory_bytes", "alignserve_gpu_memory_allocated_bytes")}
    return {"url": url, "model": info.get("model"), "backend": info.get("backend"), "duration_s": duration,
            "concurrency": concurrency, "max_tokens": max_tokens, "routes": routes, "total_5xx": five,
            "stream_errors": stream_errors, "hung": tally.hung, "disconnects": tally.disconnects,
            "transport_errors": dict(sorted(tally.transport_errors.items())),
            "compile": tally.compile,
            "rss_mib": [round(v / 2**20, 1) for _, v in series["process_resident_memory_bytes"]],
            "rss_slope_mib_per_min": slope_mib_per_min(series["process_resident_memory_bytes"]),
            "gpu_slope_mib_per_min": slope_mib_per_min(series["alignserve_gpu_memory_allocated_bytes"])}


def markdown(res: dict, device: str, command: str) -> str:
    lines = [f"# Soak test on {device}", "",
             f"Backend `{res['backend']}`, model `{res['model']}`, {res['duration_s']:.0f} s at concurrency "
             f"{res['concurrency']}, max_tokens={res['max_tokens']}, one Activation-RM compile a third of the way in. "
             f"Reproduce: `{command}`.", "",
             "| traffic | statuses | ok | p50 s | p99 s |", "|---|---|---|---|---|"]
    for kind, r in res["routes"].items():
        lines.append(f"| {kind} | {r['statuses']} | {r['ok']} | {r['p50_s']} | {r['p99_s']} |")
    rs, gs = res["rss_slope_mib_per_min"], res["gpu_slope_mib_per_min"]
    lines += ["", f"5xx: {res['total_5xx']}, stream errors: {res['stream_errors']}, hung: {res['hung']}, "
              f"client disconnects mid-stream: {res['disconnects']}, transport errors: {res['transport_errors'] or 0}. "
              f"Compile: {res['compile']}.",
              f"RSS slope: {rs if rs is None else round(rs, 2)} MiB/min (samples {res['rss_mib'][:1]} … "
              f"{res['rss_mib'][-1:]} MiB); GPU memory slope: {gs if gs is None else round(gs, 2)} MiB/min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="a loopback alignserve (others are refused)")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    ap.add_argument("--concurrency", type=int, default=64, help="clients at once: ~2x the server's capacity")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--hang-after", type=float, default=120.0, help="a request slower than this counts as hung")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    ap.add_argument("--no-compile", action="store_true", help="skip the Activation-RM compile")
    ap.add_argument("--device", default=f"cpu ({cpu_model_name()})", help="device label for the report")
    ap.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    if urlparse(args.url).hostname not in LOCAL_HOSTS:
        raise SystemExit("refusing to load a non-loopback address")
    res = asyncio.run(run(args.url, args.duration, args.concurrency, args.max_tokens, args.hang_after,
                          args.sample_every, compile_profile=not args.no_compile))
    command = reproduce_command(None if argv is None else [__file__, *argv])
    md = markdown(res, args.device, command)
    print(md)
    if args.out:
        write_files(args.out.with_suffix(""), res, md, Provenance.collect(args.device, command))
    return 0 if passed(res) else 1


def passed(res: dict) -> bool:
    """No 5xx, nothing hung, no error event inside a stream, no connection the server dropped."""
    return (res["total_5xx"] == 0 and res["hung"] == 0 and res["stream_errors"] == 0
            and not res["transport_errors"])


if __name__ == "__main__":
    raise SystemExit(main())
