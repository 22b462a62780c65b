"""The GPU profile's pure parts (bench/vllm_bench/pyspy.py) and the interleaved benchmark's
ratios: py-spy's raw output parsed and charged to functions by hand-counted samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.vllm_bench.common import model_label
from bench.vllm_bench.gpu import (
    DISTINCT,
    STOCK_2C,
    SYNC_LA,
    SYNC_PLAIN,
    _write_interleaved,
    distinct_specs,
    interleaved_plan,
    interleaved_ratios,
    la_efficiency,
)
from bench.vllm_bench.pyspy import markdown_rows, mean_util, parse_raw, summarise, thread_running

V = "/tmp/site/vllm"
S = "/root/repo/service"
RAW = "\n".join([
    # engine core main thread: 6 samples in the scheduler (2 of them inside our pairing), 3 in our logits
    # processor (under torch), 1 waiting on the GPU in vLLM's runner
    f"thread (11): MainThread;run_busy_loop ({V}/v1/engine/core.py:900);"
    f"schedule ({V}/v1/core/sched/scheduler.py:200) 4",
    f"thread (11): MainThread;run_busy_loop ({V}/v1/engine/core.py:900);schedule ({V}/v1/core/sched/scheduler.py:200);"
    f"hold_pairs ({S}/engines/vllm/pairing.py:50) 2",
    f"thread (11): MainThread;run_busy_loop ({V}/v1/engine/core.py:900);apply ({S}/engines/vllm/logits.py:80);"
    f"softmax (/usr/lib/python3/torch/functional.py:10) 3",
    f"thread (11): MainThread;run_busy_loop ({V}/v1/engine/core.py:900);"
    f"_bookkeeping_sync ({V}/v1/worker/gpu_model_runner.py:2000) 1",
    # another thread, ignored when the main thread is asked for
    f"thread (12): Thread-1 (process_output_sockets);run ({V}/v1/engine/core.py:1000) 12",
    "not a sample line",
])


def test_parse_raw_reads_threads_frames_and_counts() -> None:
    samples = parse_raw(RAW)
    assert [s.count for s in samples] == [4, 2, 3, 1, 12]
    assert samples[0].thread == "thread (11): MainThread"
    assert samples[1].frames[-1].func == "hold_pairs" and samples[1].frames[-1].line == 50
    assert samples[1].frames[-1].label == "service/engines/vllm/pairing.py:hold_pairs"
    assert samples[0].frames[-1].label == "vllm/v1/core/sched/scheduler.py:schedule"


def test_summarise_charges_self_to_the_innermost_named_frame() -> None:
    summ = summarise(parse_raw(RAW), "MainThread")
    assert summ["samples"] == 10 and summ["thread"] == "thread (11): MainThread"
    self_ = dict(summ["self"])
    assert self_ == {"vllm/v1/core/sched/scheduler.py:schedule": 0.4, "service/engines/vllm/logits.py:apply": 0.3,
                     "service/engines/vllm/pairing.py:hold_pairs": 0.2,
                     "vllm/v1/worker/gpu_model_runner.py:_bookkeeping_sync": 0.1}
    incl = dict(summ["inclusive"])
    assert incl["vllm/v1/engine/core.py:run_busy_loop"] == 1.0
    assert incl["vllm/v1/core/sched/scheduler.py:schedule"] == 0.6  # its own 4 + our pairing's 2
    assert summ["own"] == {"engines/vllm/logits.py": 0.3, "engines/vllm/pairing.py": 0.2}
    assert summ["own_share"] == 0.5
    # no thread named: the one with most samples; a thread that is absent: nothing
    assert summarise(parse_raw(RAW))["thread"].endswith("(process_output_sockets)")
    assert summarise(parse_raw(RAW), "vllm-loop")["samples"] == 0
    assert summarise([])["samples"] == 0
    md = "\n".join(markdown_rows("glue: LA", summ))
    assert "50.0 %" in md and "`service/engines/vllm/logits.py:apply` | 30.0 %" in md


def test_engine_core_thread_found_by_its_loop_not_its_name() -> None:
    """The H100 profile: stock vLLM's engine core was forked from the API process's ``vllm-loop``
    thread, so its main thread carried that name and a search for MainThread found nothing."""
    forked = RAW.replace("thread (11): MainThread", "thread (11): vllm-loop")
    assert thread_running(parse_raw(forked), "run_busy_loop") == "thread (11): vllm-loop"
    assert summarise(parse_raw(forked), "MainThread")["samples"] == 0
    assert thread_running(parse_raw(RAW), "no_such_function") is None


def test_mean_util_of_nvidia_smi_lines() -> None:
    assert mean_util("87\n93\n 100\n") == pytest.approx(93.3)
    assert mean_util("") is None


def test_la_efficiency_is_la_against_half_of_stock_at_twice_the_concurrency() -> None:
    # stock@2C 20k tok/s: the ceiling for LA at C is 10k; LA at 9.5k is 0.95 of it
    assert la_efficiency(9500.0, 20000.0) == pytest.approx(0.95)


def _runs(tok: float) -> list[dict[str, float]]:
    return [{"tok_s": tok * f, "itl_p50_ms": 3.0, "itl_p99_ms": 5.0, "ttft_p50_ms": 40.0} for f in (0.9, 1.0, 1.1)]


def test_interleaved_writes_la_efficiency_from_the_same_run(tmp_path: Path) -> None:
    runs = {"stock vLLM (async)": _runs(10000), STOCK_2C: _runs(16000), "glue: LA": _runs(6000),
            "glue: LA+steering": _runs(4000)}
    payload = _write_interleaved(tmp_path, runs, 64, 128, 3, 3, 256, "rand-7b (Qwen2, 28 layers)")
    assert payload["ratios"] == {"LA efficiency (glue: LA)": 0.75, "LA efficiency (glue: LA+steering)": 0.5,
                                 "stock@2C / stock@C": 1.6, "LA+steering / LA": 0.667}
    md = next(tmp_path.glob("vllm_interleaved_7b_*.md")).read_text()  # the 7B shape keeps its own file
    assert "rand-7b (Qwen2, 28 layers)" in md and "| LA efficiency (glue: LA) | 0.75 |" in md
    assert "| stock vLLM (async) @2C | 16000 |" in md


def test_model_label_reads_the_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 28,
                                                      "hidden_size": 3584, "torch_dtype": "bfloat16"}))
    assert model_label(str(tmp_path)) == f"{tmp_path.name} (Qwen2, 28 layers, hidden 3584, bfloat16)"
    assert model_label(str(tmp_path / "missing")) == "missing"


def test_interleaved_plan_async_two_engines_with_every_target_workload() -> None:
    engines, work = interleaved_plan("async", steer_only=False, distinct=True, ttft_c=8)
    assert engines == {"stock": {"glue": False}, "glue": {"pair_async": True}}
    names = [w.name for w in work]
    assert names == ["stock vLLM (async)", STOCK_2C, "glue: plain", "glue: steering", DISTINCT, "glue: LA",
                     "glue: LA+steering", "stock vLLM (async) @8", "glue: LA @8"]
    assert {w.name: w.engine for w in work}[DISTINCT] == "glue"
    assert [w.concurrency_factor for w in work if w.name == STOCK_2C] == [2.0]
    engines, work = interleaved_plan("async", steer_only=False, distinct=False, ttft_c=0, compare_sync=True)
    assert engines["glue-sync"] == {"pair_async": False}
    assert [w.name for w in work if w.engine == "glue-sync"] == [SYNC_PLAIN, SYNC_LA]
    engines, work = interleaved_plan("sync", steer_only=True, distinct=False, ttft_c=0, compare_sync=True)
    assert "glue-sync" not in engines
    assert engines["glue"] == {"pair_async": False} and engines["steer-only"] == {"pairing": False}
    assert DISTINCT not in [w.name for w in work] and not any(w.fixed_concurrency for w in work)


def test_distinct_specs_differ_and_are_reproducible() -> None:
    a, b = distinct_specs(32, 8, 4), distinct_specs(32, 8, 4)
    assert len(a) == 4 and all(x[0].vector.equal(y[0].vector) for x, y in zip(a, b, strict=True))
    assert not a[0][0].vector.equal(a[1][0].vector) and a[0][1].head == 5 and a[0][1].vector.shape == (8,)


def test_interleaved_ratios_cover_the_targets() -> None:
    def v(tok: float, ttft: float = 50.0) -> dict[str, float]:
        return {"tok_s_median": tok, "ttft_p50_ms": ttft}
    summary = {"stock vLLM (async)": v(10000), STOCK_2C: v(16000), "glue: plain": v(9800),
               "glue: steering": v(9000), DISTINCT: v(8000), "glue: LA": v(7600), "glue: LA+steering": v(7220),
               "stock vLLM (async) @8": v(2000, 40.0), "glue: LA @8": v(1000, 60.0)}
    r = interleaved_ratios(summary, 8)
    assert r["glue plain / stock"] == 0.98 and r["steering / stock"] == 0.9 and r["64 distinct specs / stock"] == 0.8
    assert r["LA+steering / LA"] == 0.95 and r["LA efficiency (glue: LA)"] == 0.95
    assert r["TTFT p50 LA / stock @8"] == 1.5
    assert "TTFT p50 LA / stock @8" not in interleaved_ratios(summary, 0)
    summary |= {SYNC_PLAIN: v(6500), SYNC_LA: v(4000)}
    r = interleaved_ratios(summary, 8)
    assert r["glue plain, sync pairing / stock"] == 0.65 and r[f"LA efficiency ({SYNC_LA})"] == 0.5


def test_interleaved_plan_compare_sort_adds_an_la_engine_with_the_kernel_off() -> None:
    engines, work = interleaved_plan("async", steer_only=False, distinct=False, ttft_c=0, compare_sort=True)
    assert engines["glue-sort"] == {"pair_async": True}
    sort = [w for w in work if w.engine == "glue-sort"]
    assert [(w.name, w.la) for w in sort] == [("glue, full-sort nucleus: LA", True)]
