"""The HTTP comparison's pure parts: the vLLM client's command line, ratios and the report."""

from __future__ import annotations

from pathlib import Path

from bench.harness import Provenance
from bench.http_compare import METRICS, bench_cmd, markdown, median_of, ratios, summarize


def test_bench_command_is_vllms_documented_random_run(tmp_path: Path) -> None:
    cmd = bench_cmd("http://127.0.0.1:9", "/m", 64, 128, 128, 128, tmp_path / "r.json",
                    {"vllm_xargs": {"alignserve_profile": "p"}})
    joined = " ".join(cmd)
    for part in ("bench serve", "--dataset-name random", "--ignore-eos", "--max-concurrency 64", "--num-prompts 128",
                 "--endpoint /v1/completions", "--random-input-len 128", "--random-output-len 128"):
        assert part in joined, part
    assert cmd[:2] == ["bench", "serve"]
    assert cmd[cmd.index("--extra-body") + 1] == '{"vllm_xargs": {"alignserve_profile": "p"}}'


def test_ratios_and_report() -> None:
    v = summarize({"output_throughput": 1000.0, "median_ttft_ms": 50, "median_itl_ms": 5.0, "completed": 10})
    a = summarize({"output_throughput": 950.0, "median_ttft_ms": 100, "median_itl_ms": 4.0, "completed": 10})
    assert set(v) == set(METRICS)
    r = ratios(a, v)
    assert r == {"output_throughput": 0.95, "median_itl": 1.25, "median_ttft": 0.5}
    assert median_of([v, a, v])["output_throughput"] == 1000.0
    res = {"model": "m", "model_info": "", "vllm_version": "0.26.0", "input_len": 1, "output_len": 1,
           "rounds": 3, "levels": {8: {"vllm": v, "alignserve": a, "ratio": r}},
           "la": {"c": 4, "la": a, "stock_2c": v, "efficiency": 1.9}}
    md = markdown(res, Provenance(device="GPU", command="c", date="d", git_revision="g"))
    assert "| 8 | alignserve | 950 |" in md and "| 8 | 0.95 | 1.25 | 0.5 |" in md and "**1.9**" in md


def test_report_shows_the_api_profile() -> None:
    v = summarize({"output_throughput": 1000.0, "median_ttft_ms": 50, "median_itl_ms": 5.0})
    res = {"model": "m", "model_info": "", "vllm_version": "0.26.0", "input_len": 1, "output_len": 1,
           "rounds": 1, "levels": {64: {"vllm": v, "alignserve": v, "ratio": ratios(v, v)}},
           "profile": {"c": 64, "tok_s": 900.0, "hot_frames": [("send (uvicorn/h11.py)", 0.25)],
                       "inclusive_frames": [("stream_tokens", 0.4)]}}
    md = markdown(res, Provenance(device="GPU", command="c", date="d", git_revision="g"))
    assert "concurrency 64" in md and "| `send (uvicorn/h11.py)` | 0.25 |" in md and "| `stream_tokens` | 0.4 |" in md
