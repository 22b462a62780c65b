"""alignserve's HTTP path against `vllm serve`, both driven by vLLM's own benchmark client.

On one GPU host, starts `vllm serve` (vLLM's OpenAI server) and `alignserve serve --backend vllm`
on the same model, side by side (each with its share of GPU memory), and runs `vllm bench serve`
(random dataset, fixed input/output lengths, EOS ignored, streamed /v1/completions) against each,
interleaved level by level for --rounds rounds: a client nobody here wrote. Reported per server and
concurrency: output tokens/s, median and p99 time to first token and inter-token latency, failures
— and the ratios alignserve/vllm from the same run. With --la, alignserve also serves Linear
Alignment over HTTP (a stored profile through ``vllm_xargs``) at --la-concurrency C, next to vLLM
at 2C: ``LA efficiency = LA@C / (vllm@2C / 2)`` (1.0 = no cost beyond the second stream).

Usage (GPU host, vLLM installed): python -m bench.http_compare --model /tmp/rand-0.5b --levels 1,8,64,256 \\
    --la --out bench/results/http_compare_h200
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Provenance, device_label, write_files

SERVED = "bench-model"
LA_PROFILE = {"name": "bench-la", "principle": "Answer in one short sentence.", "la": {"strength": 3.0}}
METRICS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms", "completed",
           "failed")


@dataclass
class Server:
    name: str
    cmd: list[str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str, timeout: float) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"{self.name} not ready in {timeout:.0f}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


def vllm_server(model: str, port: int, mem: float, max_seqs: int, log: Path) -> Server:
    return Server("vllm", [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model,
                           "--served-model-name", SERVED, "--port", str(port), "--gpu-memory-utilization", str(mem),
                           "--max-num-seqs", str(max_seqs), "--max-model-len", "4096"], port, log)


def alignserve_server(model: str, port: int, mem: float, max_seqs: int, home: Path, log: Path) -> Server:
    return Server("alignserve", [sys.executable, "-m", "service.cli", "serve", "--backend", "vllm", "--model", model,
                                 "--served-model-name", SERVED, "--port", str(port), "--home", str(home),
                                 "--gpu-memory-utilization", str(mem), "--max-num-seqs", str(2 * max_seqs),
                                 "--max-queue", str(4 * max_seqs), "--max-model-len", "4096",
                                 "--reward-model", "none", "--log-level", "WARNING"], port, log)


def bench_cmd(url: str, tokenizer: str, concurrency: int, num_prompts: int, input_len: int, output_len: int,
              result: Path, extra_body: dict[str, Any] | None = None) -> list[str]:
    """`vllm bench serve` as vLLM documents it: random dataset, fixed lengths, EOS ignored."""
    cmd = ["bench", "serve", "--backend", "openai",
           "--base-url", url, "--endpoint", "/v1/completions", "--model", SERVED, "--tokenizer", tokenizer,
           "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
           str(output_len), "--random-range-ratio", "0", "--ignore-eos", "--num-prompts", str(num_prompts),
           "--max-concurrency", str(concurrency), "--percentile-metrics", "ttft,itl,tpot",
           "--metric-percentiles", "50,99", "--temperature", "0", "--save-result", "--result-dir", str(result.parent),
           "--result-filename", result.name, "--seed", "0"]
    if extra_body:
        cmd += ["--extra-body", json.dumps(extra_body)]
    return cmd


def vllm_bench_serve(cmd: list[str]) -> dict[str, Any]:
    """Run `vllm bench serve` (``cmd`` as on its command line after ``vllm``) in this process — vLLM's
    own client code, imported once instead of once per run — and return its result JSON."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as serve_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    assert cmd[:2] == ["bench", "serve"], cmd
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    return dict(serve_main(parser.parse_args(cmd[2:])))


def summarize(raw: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(raw.get(k, 0.0) or 0.0), 3) for k in METRICS}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in METRICS}


def ratios(al: dict[str, float], vl: dict[str, float]) -> dict[str, float | None]:
    """alignserve / vllm: throughput (higher is better) and latencies (lower is better, so vllm/alignserve:
    ≥ 1 means alignserve is at least as fast)."""
    def div(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None
    return {"output_throughput": div(al["output_throughput"], vl["output_throughput"]),
            "median_itl": div(vl["median_itl_ms"], al["median_itl_ms"]),
            "median_ttft": div(vl["median_ttft_ms"], al["median_ttft_ms"])}


def markdown(res: dict[str, Any], prov: Provenance) -> str:
    lines = [f"# alignserve HTTP vs `vllm serve` on {prov.device}", "",
             f"Model `{res['model']}` ({res['model_info']}), input {res['input_len']} / output {res['output_len']} "
             f"tokens, EOS ignored, client `vllm bench serve` (vLLM {res['vllm_version']}, streamed "
             f"/v1/completions), medians of {res['rounds']} interleaved rounds. Reproduce: `{prov.command}`.", "",
             "| concurrency | server | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | failed |",
             "|---|---|---|---|---|---|---|---|"]
    for c, row in res["levels"].items():
        for name in ("vllm", "alignserve"):
            m = row[name]
            lines.append(f"| {c} | {name} | {m['output_throughput']:.0f} | {m['median_ttft_ms']:.1f} | "
                         f"{m['p99_ttft_ms']:.1f} | {m['median_itl_ms']:.2f} | {m['p99_itl_ms']:.2f} | "
                         f"{m['failed']:.0f} |")
    lines += ["", "Ratios alignserve/vllm (target ≥ 0.95; latency ratios are vllm/alignserve, so ≥ 1 is as fast):",
              "", "| concurrency | output tok/s | ITL p50 | TTFT p50 |", "|---|---|---|---|"]
    for c, row in res["levels"].items():
        r = row["ratio"]
        lines.append(f"| {c} | {r['output_throughput']} | {r['median_itl']} | {r['median_ttft']} |")
    if res.get("profile"):
        pr = res["profile"]
        lines += ["", f"Where alignserve's API process spends its CPU at concurrency {pr['c']} (plain; an extra run "
                  f"under py-spy --gil, not in the medians; {pr['tok_s']:.0f} tok/s under the sampler): share of "
                  "GIL-holding samples by innermost frame, then alignserve's own functions inclusive.", "",
                  "| frame | share |", "|---|---|"]
        lines += [f"| `{f}` | {s} |" for f, s in pr["hot_frames"]]
        lines += ["", "| function (inclusive) | share |", "|---|---|"]
        lines += [f"| `{f}` | {s} |" for f, s in pr["inclusive_frames"]]
    if res.get("la"):
        la = res["la"]
        lines += ["", f"Linear Alignment over HTTP (stored profile via `vllm_xargs`): alignserve LA@{la['c']} "
                  f"{la['la']['output_throughput']:.0f} tok/s, vllm@{2 * la['c']} "
                  f"{la['stock_2c']['output_throughput']:.0f} tok/s → HTTP LA efficiency **{la['efficiency']}** "
                  f"(LA@C / (stock@2C / 2)); ITL p50 "
                  f"{la['la']['median_itl_ms']:.2f} ms."]
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace, results: dict[str, dict[int, list[dict[str, float]]]],
           la_runs: list[dict[str, float]], rounds_done: int, exits: dict[str, int | None] | None,
           profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """Medians over the rounds done so far (a partial report survives a run cut short)."""
    import vllm

    levels = [int(x) for x in args.levels.split(",")]
    res: dict[str, Any] = {
        "model": args.model, "model_info": args.model_info, "vllm_version": vllm.__version__,
        "input_len": args.input_len, "output_len": args.output_len, "rounds": rounds_done,
        "exits": exits, "levels": {},
    }
    for c in levels:
        if results["vllm"].get(c) and results["alignserve"].get(c):
            v, a = median_of(results["vllm"][c]), median_of(results["alignserve"][c])
            res["levels"][c] = {"vllm": v, "alignserve": a, "ratio": ratios(a, v)}
    c = args.la_concurrency
    if args.la and la_runs and results["vllm"].get(2 * c):
        la, stock2 = median_of(la_runs), median_of(results["vllm"][2 * c])
        stock = stock2["output_throughput"]
        eff = round(la["output_throughput"] / (stock / 2), 3) if stock else None
        res["la"] = {"c": c, "la": la, "stock_2c": stock2, "efficiency": eff}
    if profile:
        res["profile"] = profile
    res["raw"] = {k: {str(c): runs for c, runs in v.items()} for k, v in results.items()} | {"la": la_runs}
    return res


def profile_server(args: argparse.Namespace, url: str, pid: int, out_dir: Path) -> dict[str, Any] | None:
    """One extra plain run at --profile-concurrency with py-spy sampling the API process (GIL holders):
    where the HTTP path's host time goes. py-spy slows the server, so this run is not in the medians."""
    from bench.http_overhead import hot_frames

    c = args.profile_concurrency
    raw = out_dir / "alignserve_api.pyspy.raw"
    try:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "-o", str(raw),
                                "--rate", "250", "--gil", "--nonblocking"], stdout=subprocess.DEVNULL,
                               stderr=(out_dir / "py-spy.log").open("w"))
    except FileNotFoundError:
        print("py-spy not on PATH: no profile", flush=True)
        return None
    time.sleep(1.0)
    m = summarize(vllm_bench_serve(bench_cmd(url, args.model, c, max(args.min_prompts, args.prompts_per_slot * c),
                                             args.input_len, args.output_len, out_dir / f"profile_c{c}.json")))
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
    if not raw.exists():
        print("py-spy wrote nothing: " + (out_dir / "py-spy.log").read_text()[-500:], flush=True)
        return None
    own, incl = hot_frames(raw, top=20)
    return {"c": c, "tok_s": m["output_throughput"], "hot_frames": own, "inclusive_frames": incl}


def run(args: argparse.Namespace, publish: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Both servers up, then ``--rounds`` interleaved rounds; ``publish`` gets the report after each."""
    out_dir = args.work
    out_dir.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.levels.split(",")]
    top = max(levels + [2 * args.la_concurrency])
    vl = vllm_server(args.model, args.port, args.mem, top, out_dir / "vllm.log")
    al = alignserve_server(args.model, args.port + 1, args.mem, top, out_dir / "home", out_dir / "alignserve.log")
    results: dict[str, dict[int, list[dict[str, float]]]] = {"vllm": {}, "alignserve": {}}
    la_runs: list[dict[str, float]] = []
    profile: dict[str, Any] | None = None
    done = 0
    try:
        vl.start("/v1/models", args.start_timeout)
        al.start("/readyz", args.start_timeout)
        if args.la:
            r = httpx.post(al.url + "/profiles", json=LA_PROFILE, timeout=30)
            r.raise_for_status()
        plan = [(c, s) for c in levels for s in (vl, al)]
        if args.la and 2 * args.la_concurrency not in levels:
            plan.append((2 * args.la_concurrency, vl))
        for rnd in range(args.rounds):
            for c, srv in plan:
                res_file = out_dir / f"{srv.name}_c{c}_r{rnd}.json"
                n = max(args.min_prompts, args.prompts_per_slot * c)
                m = summarize(vllm_bench_serve(bench_cmd(srv.url, args.model, c, n, args.input_len,
                                                         args.output_len, res_file)))
                results[srv.name].setdefault(c, []).append(m)
                print(json.dumps({"round": rnd, "server": srv.name, "c": c, **m}), flush=True)
            if args.la:
                c = args.la_concurrency
                res_file = out_dir / f"alignserve_la_c{c}_r{rnd}.json"
                extra = {"vllm_xargs": {"alignserve_profile": LA_PROFILE["name"]}}
                la_runs.append(summarize(vllm_bench_serve(bench_cmd(
                    al.url, args.model, c, max(args.min_prompts, args.prompts_per_slot * c), args.input_len,
                    args.output_len, res_file, extra))))
                print(json.dumps({"round": rnd, "server": "alignserve-la", "c": c, **la_runs[-1]}), flush=True)
            done = rnd + 1
            publish(report(args, results, la_runs, done, None))
        if args.profile and al.proc is not None:
            profile = profile_server(args, al.url, al.proc.pid, out_dir)
    finally:
        codes = {"alignserve_exit": al.stop(), "vllm_exit": vl.stop()}
    res = report(args, results, la_runs, done, codes, profile)
    publish(res)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF folder both servers load")
    ap.add_argument("--model-info", default="", help="what the model is, for the report (e.g. 'random Qwen2 0.5B')")
    ap.add_argument("--levels", default="1,8,64,256", help="concurrency levels")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--prompts-per-slot", type=int, default=2, help="requests per concurrency slot per run")
    ap.add_argument("--min-prompts", type=int, default=16)
    ap.add_argument("--la", action="store_true", help="also Linear Alignment over HTTP on alignserve")
    ap.add_argument("--la-concurrency", type=int, default=64)
    ap.add_argument("--profile", action="store_true",
                    help="after the rounds, sample alignserve's API process with py-spy during one more plain run")
    ap.add_argument("--profile-concurrency", type=int, default=64)
    ap.add_argument("--mem", type=float, default=0.42, help="GPU memory share of each server")
    ap.add_argument("--port", type=int, default=8300)
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--work", type=Path, default=Path("/tmp/http_compare"))
    ap.add_argument("--out", type=Path, required=True, help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    prov = Provenance.collect(device_label(None))

    def publish(res: dict[str, Any]) -> None:
        write_files(args.out.with_suffix(""), res, markdown(res, prov), prov)

    res = run(args, publish)
    print(markdown(res, prov))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
