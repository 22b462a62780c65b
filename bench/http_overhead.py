"""The HTTP server's own ceiling: alignserve with a stand-in engine that costs nothing per token.

The H200 comparison with `vllm serve` (``bench/results/http_compare_h200.md``) shows alignserve's
throughput falling behind as concurrency grows while its engine runs at stock speed. This isolates
the host path: ``serve`` runs the real app and server (same domain layer, worker, bridge, SSE and
/v1 routes) over :class:`StepEngine`, which emits one token for every live request every
``--step-ms`` like a continuous-batching engine's output loop and computes nothing; ``load``
streams /v1/completions at each concurrency and reports output tokens/s against the stand-in's
ceiling (concurrency x 1000/step-ms). With ``--profile``, py-spy samples the server meanwhile and
the report lists where its time goes. Loopback only; every loop is bounded.

Usage: python -m bench.http_overhead --levels 1,8,64,256 --step-ms 5 --profile --out bench/results/http_overhead
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.harness import Provenance, device_label, write_files
from service.engines.base import EngineStats, GenerationRequest, GenerationResult, PromptSize, TokenEvent

SERVED = "stand-in"
TOKEN_TEXT = b" tok"  # the stand-in's text for every token


class StepEngine:
    """A continuous engine with zero compute: every ``step_s`` one token per live request."""

    backend = "stand-in"
    model_name = SERVED
    max_model_len = 4096
    num_layers, num_heads, head_dim = 2, 4, 16

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self._live: dict[str, tuple[GenerationRequest, concurrent.futures.Future[GenerationResult], list[int],
                                    float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stand-in-engine", daemon=True)
        self._thread.start()

    def prompt_size(self, messages: list[dict[str, str]], principle: str | None,
                    placement: str = "system") -> PromptSize:
        n = sum(len(m["content"].split()) for m in messages) + 8
        return PromptSize(n, n + 8 if principle else None)

    def submit(self, request: GenerationRequest) -> concurrent.futures.Future[GenerationResult]:
        fut: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        with self._lock:
            self._live[request.request_id] = (request, fut, [], time.perf_counter())
        return fut

    def _loop(self) -> None:
        """Steps on a fixed cadence (like a GPU whose step time does not depend on the host): a step
        that starts late because the thread waited for the GIL is not made up by waiting less."""
        next_step = time.perf_counter() + self.step_s
        while not self._stop.wait(max(0.0, next_step - time.perf_counter())):
            next_step = max(next_step + self.step_s, time.perf_counter() - self.step_s)
            with self._lock:
                live = list(self._live.items())
            for rid, (req, fut, toks, started) in live:
                finish = "cancelled" if req.cancelled.is_set() else None
                if finish is None:
                    toks.append(100 + len(toks))
                    if req.on_token is not None:
                        req.on_token(TokenEvent(rid, toks[-1], " tok", len(toks) - 1))
                    if len(toks) >= req.sampling.max_tokens:
                        finish = "length"
                if finish is not None:
                    with self._lock:
                        self._live.pop(rid, None)
                    now = time.perf_counter() - started
                    fut.set_result(GenerationResult(rid, " tok" * len(toks), list(toks), finish,  # type: ignore[arg-type]
                                                    8, None, len(toks), [], self.step_s, now))

    def stats(self) -> EngineStats:
        return EngineStats(running_sequences=len(self._live))

    def close(self) -> None:
        self._stop.set()


def serve(port: int, step_ms: float) -> int:
    from service.api.app import create_app
    from service.api.http_server import serve as run_server
    from service.config import Settings
    from service.scheduling.health import EngineHealth

    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"http-overhead-{port}"
    settings = Settings(model=SERVED, served_model_name=SERVED, port=port, home=home, max_num_seqs=4096,
                        max_queue=4096, max_connections=4096, log_level="WARNING", reward_model="none")
    health = EngineHealth()
    app = create_app(settings, engine_factory=lambda s: StepEngine(step_ms / 1000), reward_factory=None,
                     drain_s=5.0, health=health)
    return run_server(app, settings, health, 5.0)


async def stream_one(host: str, port: int, max_tokens: int, itls: list[float]) -> int:
    """One streamed /v1/completions over a raw socket: a minimal client (no SSE or JSON parsing,
    tokens counted as the stand-in's token text in the bytes read), so at high concurrency the
    client is not what limits the measurement."""
    body = json.dumps({"model": SERVED, "prompt": "Tell me a story.", "max_tokens": max_tokens, "stream": True,
                       "ignore_eos": True, "temperature": 0}).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    tokens, last = 0, None
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            data = await reader.read(65536)
            if not data:
                raise RuntimeError("connection closed before the response head")
            head += data
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"HTTP {status.decode()}: {head[:300]!r}")
        data = head.split(b"\r\n\r\n", 1)[1]
        while True:
            n = data.count(TOKEN_TEXT)
            if n:
                now = time.perf_counter()
                if last is not None:
                    itls.append(now - last)
                last = now
                tokens += n
            if b"data: [DONE]" in data:
                break
            data = await reader.read(65536)
            if not data:
                break
    finally:
        writer.close()
    return tokens


async def level(url: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    host, port = url.rsplit("//", 1)[1].split(":")
    itls: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with sem:
            return await stream_one(host, int(port), max_tokens, itls)
    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one() for _ in range(requests))))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "output_tok_s": round(tokens / wall, 1), "wall_s": wall,
            "median_itl_ms": round(statistics.median(itls) * 1e3, 2) if itls else 0.0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hot_frames(raw: Path, top: int = 15) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's raw (collapsed) output of GIL-holding samples — where the server spends CPU:
    the share of samples per innermost frame (self), and per alignserve function anywhere on the
    stack (inclusive: what each part of our own code costs with everything it calls)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        own[frames[-1]] += int(n)
        for f in {f.split(" (")[0] for f in frames if "(service/" in f or "(bench/" in f}:
            incl[f] += int(n)
    if not total:
        return [], []
    return ([(f, round(c / total, 3)) for f, c in own.most_common(top)],
            [(f, round(c / total, 3)) for f, c in incl.most_common(top)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=8411)
    ap.add_argument("--step-ms", type=float, default=5.0, help="stand-in engine step (one token per request)")
    ap.add_argument("--levels", default="1,8,64,256")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests-per-slot", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="sample the server with py-spy during the top level")
    ap.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    if args.serve:
        return serve(args.port, args.step_ms)
    url = f"http://127.0.0.1:{args.port}"
    log = Path(f"/tmp/http-overhead-{args.port}.log")
    proc = subprocess.Popen([sys.executable, "-m", "bench.http_overhead", "--serve", "--port", str(args.port),
                             "--step-ms", str(args.step_ms)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    rows: list[dict[str, float]] = []
    frames: list[tuple[str, float]] = []
    inclusive: list[tuple[str, float]] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        levels = [int(x) for x in args.levels.split(",")]
        for c in levels:
            spy = None
            raw = Path(f"/tmp/http-overhead-{args.port}.raw")
            if args.profile and c == max(levels):
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--format", "raw", "-o", str(raw),
                                        "--rate", "500", "--gil", "--nonblocking"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            cpu0, client0 = cpu_seconds(proc.pid), time.process_time()
            row = asyncio.run(level(url, c, max(8, args.requests_per_slot * c), args.max_tokens))
            tokens = row["output_tok_s"] * row.pop("wall_s")
            row["server_cpu_us_per_token"] = round((cpu_seconds(proc.pid) - cpu0) / tokens * 1e6, 1)
            row["client_cpu_us_per_token"] = round((time.process_time() - client0) / tokens * 1e6, 1)
            row["ceiling_tok_s"] = round(c * 1000 / args.step_ms, 1)
            row["of_ceiling"] = round(row["output_tok_s"] / row["ceiling_tok_s"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
                frames, inclusive = hot_frames(raw) if raw.exists() else ([], [])
    finally:
        proc.terminate()
        proc.wait(30)
    prov = Provenance.collect(device_label("cpu"))
    res = {"step_ms": args.step_ms, "max_tokens": args.max_tokens, "levels": rows,
           "hot_frames": frames, "inclusive_frames": inclusive,
           "client": "minimal raw-socket streaming client in a separate process (same machine)"}
    lines = [f"# alignserve HTTP path over a zero-cost engine ({prov.device})", "",
             f"Stand-in engine: one token per live request every {args.step_ms} ms, no compute; streamed "
             f"/v1/completions, {args.max_tokens} tokens each, EOS ignored; client and server share this machine.",
             "", "| concurrency | output tok/s | ceiling tok/s | of ceiling | ITL p50 ms | server CPU µs/token "
             "| client CPU µs/token |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['output_tok_s']} | {r['ceiling_tok_s']} | {r['of_ceiling']} | "
              f"{r['median_itl_ms']} | {r['server_cpu_us_per_token']} | {r['client_cpu_us_per_token']} |" for r in rows]
    if frames:
        lines += ["", f"Where the server's CPU goes at concurrency {max(r['concurrency'] for r in rows)} "
                  "(py-spy, samples of the thread holding the GIL; share by innermost frame):", "",
                  "| frame | share |", "|---|---|"]
        lines += [f"| `{f}` | {s} |" for f, s in frames]
        lines += ["", "Inclusive, alignserve's own functions (with everything they call):", "",
                  "| function | share |", "|---|---|"]
        lines += [f"| `{f}` | {s} |" for f, s in inclusive]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        write_files(args.out, res, md, prov)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
