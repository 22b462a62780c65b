"""The shared bench harness (bench/harness) and the vLLM suites' entry (bench/vllm_bench): the
parts that need no GPU — bootstrap, device label/tag, reproduce command, results files, the
server fixture, the phase registry and every script's --help without vLLM installed."""

from __future__ import annotations

import importlib
import json
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.harness import (
    PROVENANCE_KEYS,
    Provenance,
    ServerProcess,
    bootstrap_ci,
    cpu_model_name,
    device_label,
    device_tag,
    metric_values,
    read_results,
    reproduce_command,
    write_files,
    write_results,
)
from bench.harness.results import ROOT, git_revision
from bench.vllm_bench.__main__ import main as vllm_main
from bench.vllm_bench.registry import SUITES

from .server_proc import free_port

# ---- bootstrap ------------------------------------------------------------------------------


def test_bootstrap_reproduces_the_intervals_of_the_existing_results() -> None:
    # values from the former bench/cross_lingual.bootstrap_ci (seed 0, 2000 rounds), which wrote
    # the intervals now in bench/results/quality_eval_*.json and cross_lingual_h100.json
    assert bootstrap_ci([1, 0, 0.5, 1, 0, 1, 1, 0]) == (0.25, 0.875)
    assert bootstrap_ci([1.0] * 5 + [0.0] * 5, seed=3) == (0.2, 0.8)
    # one rng.choice per draw, not rng.choices (which draws other numbers: (0.2333, 0.7083) here)
    assert bootstrap_ci([0.1, 0.4, 0.35, 0.8, 0.9, 0.2]) == pytest.approx((0.24166666666666667, 0.6916666666666665))


def test_bootstrap_follows_its_documented_draws_and_ranks() -> None:
    values, rounds, seed = [0.13, 0.71, 0.02, 0.55, 0.91], 40, 11
    rng = random.Random(seed)  # the docstring's recipe, by hand
    means = sorted(sum(rng.choice(values) for _ in values) / len(values) for _ in range(rounds))
    assert bootstrap_ci(values, rounds=rounds, seed=seed) == (means[1], means[38])  # a = 0.025: ranks 1, 39 - 1
    assert bootstrap_ci(values, rounds=rounds, seed=seed, level=0.5) == (means[10], means[29])
    # 90 %: a * rounds is 1.9999999999999996 in floats; the rank is still 2 (and 38 - 1 at the top)
    assert means[1] < means[2]
    assert bootstrap_ci(values, rounds=rounds, seed=seed, level=0.9) == (means[2], means[37])


def test_bootstrap_edge_cases() -> None:
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    wins = [1.0] * 30 + [0.0] * 10
    lo, hi = bootstrap_ci(wins)
    assert lo < 0.75 < hi and bootstrap_ci(wins, seed=1) != (lo, hi)
    narrow = bootstrap_ci(wins * 10)
    assert hi - lo > narrow[1] - narrow[0]
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], level=1.0)


# ---- device -------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "tag"), [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"), ("Tesla T4", "t4"), ("NVIDIA L40S", "l40s"),
    ("cpu (Intel(R) Xeon(R) Processor, 2 threads)", "cpu"), ("cpu", "cpu"),
])
def test_device_tag(label: str, tag: str) -> None:
    assert device_tag(label) == tag


def test_cpu_model_name_reads_cpuinfo() -> None:
    text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338\nflags\t: fpu\n"
    assert cpu_model_name(text) == "Intel(R) Xeon(R) Gold 6338"
    assert cpu_model_name("processor : 0\nHardware : Raspberry Pi 4\n") == "Raspberry Pi 4"
    assert cpu_model_name("nothing here\n")  # falls back to platform, never empty


def test_device_label_cpu_and_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = device_label("cpu")
    assert cpu == f"cpu ({cpu_model_name()}, {torch.get_num_threads()} threads)"
    assert device_label(torch.device("cpu")) == cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Fake GPU {i}")
    assert device_label(None) == device_label("auto") == "Fake GPU 0"
    assert device_label("cuda:1") == "Fake GPU 1"
    assert device_label(torch.device("cuda", 2)) == "Fake GPU 2"
    assert device_label("cpu") == cpu


# ---- reproduce command and results files ----------------------------------------------------


def test_reproduce_command_is_a_module_command() -> None:
    script = str(ROOT / "bench" / "cpu_decode.py")
    assert reproduce_command([script, "--max-tokens", "8"]) == "python -m bench.cpu_decode --max-tokens 8"
    assert reproduce_command(["bench/load.py", "--device", "H100 (bf16)"]) == \
        "python -m bench.load --device 'H100 (bf16)'"
    main = str(ROOT / "bench" / "vllm_bench" / "__main__.py")
    assert reproduce_command([main, "gpu", "stress"], python="X=1 python3") == \
        "X=1 python3 -m bench.vllm_bench gpu stress"
    assert reproduce_command(["/elsewhere/tool.py", "a"]) == "python /elsewhere/tool.py a"


def test_git_revision_names_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_GIT_REVISION", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(re.escape(head) + r"(\+dirty)?", git_revision())
    monkeypatch.setenv("BENCH_GIT_REVISION", "abc123 (copied tree)")
    assert git_revision() == "abc123 (copied tree)"
    monkeypatch.delenv("BENCH_GIT_REVISION")
    assert git_revision(Path("/")) == "unknown"


def test_git_revision_ignores_rewritten_results_but_not_code(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_GIT_REVISION", raising=False)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "x_cpu.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-qm", "init")
    head = git("rev-parse", "HEAD")
    (tmp_path / "bench" / "results" / "x_cpu.json").write_text('{"new": 1}')  # a re-run's results
    (tmp_path / "untracked.py").write_text("")
    assert git_revision(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_revision(tmp_path) == head + "+dirty"


def test_write_results_records_device_command_date_and_revision(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "arm_steering.py"), "--seeds", "0"])
    monkeypatch.setenv("BENCH_GIT_REVISION", "deadbeef")
    prov = Provenance.collect("NVIDIA H100 80GB HBM3")
    assert prov.command == "python -m bench.arm_steering --seeds 0" and prov.tag == "h100"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov.date)
    stem = write_results(tmp_path / "out", "arm_steering", {"rows": [1, 2], "text": "é"}, "# Title\n\n| a |\n", prov)
    assert stem == tmp_path / "out" / "arm_steering_h100"
    data = json.loads(stem.with_suffix(".json").read_text())
    assert list(data)[:4] == list(PROVENANCE_KEYS)
    assert data == {"device": "NVIDIA H100 80GB HBM3", "command": "python -m bench.arm_steering --seeds 0",
                    "date": prov.date, "git_revision": "deadbeef", "rows": [1, 2], "text": "é"}
    md = stem.with_suffix(".md").read_text()
    assert md.startswith("# Title\n\n| a |\n\n")
    assert md.rstrip().splitlines()[-1] == (
        f"Device: NVIDIA H100 80GB HBM3 · reproduce: `python -m bench.arm_steering --seeds 0` · date {prov.date} · "
        "git deadbeef")
    assert read_results(stem.with_suffix(".json")) == {"rows": [1, 2], "text": "é"}
    assert read_results(tmp_path / "missing.json") == {}


def test_writer_refuses_payloads_that_carry_their_own_provenance(tmp_path: Path) -> None:
    prov = Provenance("cpu", "python -m bench.x", "2026-01-01T00:00:00Z", "rev")
    with pytest.raises(ValueError, match="device"):
        write_files(tmp_path / "x", {"device": "other", "rows": []}, "# x\n", prov)
    assert not list(tmp_path.iterdir())
    write_files(tmp_path / "load_h100_transformers", {"rows": []}, "# x\n", prov)  # caller-chosen stem kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["load_h100_transformers.json", "load_h100_transformers.md"]


def test_metric_values_skips_comments_and_keeps_labels() -> None:
    text = ("# HELP alignserve_queue_depth q\n# TYPE alignserve_queue_depth gauge\nalignserve_queue_depth 3.0\n"
            'alignserve_generations_total{finish_reason="cancelled"} 2.0\nprocess_resident_memory_bytes 1e6\n')
    assert metric_values(text) == {"alignserve_queue_depth": 3.0,
                                   'alignserve_generations_total{finish_reason="cancelled"}': 2.0}
    assert metric_values(text, "")["process_resident_memory_bytes"] == 1e6


# ---- server fixture -----------------------------------------------------------------------


@pytest.mark.slow
def test_server_process_starts_answers_and_stops(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = {"ALIGNSERVE_MAX_MODEL_LEN": "512", "ALIGNSERVE_DTYPE": "float32"}
    with ServerProcess(["--model", str(tiny_model_dir), "--home", str(tmp_path), "--device", "cpu",
                        "--db-url", f"sqlite:///{tmp_path / 'p.db'}"], free_port(), tmp_path / "s.log", env) as srv:
        assert srv.wait_ready(120) > 0
        import httpx

        assert httpx.get(srv.url + "/readyz").status_code == 200
    # uvicorn re-raises SIGTERM after a graceful shutdown: -15 is the clean exit (as in vllm_serve_h100.json)
    assert srv.shutdown is not None and srv.shutdown["exit_code"] in (0, -signal.SIGTERM)
    assert srv.stop() is srv.shutdown  # idempotent
    assert srv.proc.poll() is not None


@pytest.mark.slow
def test_server_process_that_dies_while_loading_says_why(tmp_path: Path) -> None:
    srv = ServerProcess(["--no-such-flag"], free_port(), tmp_path / "s.log")
    with pytest.raises(RuntimeError, match=r"exited with 2(.|\n)*no-such-flag"):
        srv.wait_ready(60)
    assert srv.stop()["exit_code"] == 2


# ---- the vLLM suites' entry -----------------------------------------------------------------


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import vllm`` fail even where vLLM is installed."""
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_registry_lists_every_phase_and_the_results_it_keeps() -> None:
    assert set(SUITES) == {"gpu", "pairs", "serve", "reward", "compile", "faults", "archs"}
    assert list(SUITES["pairs"].phases) == ["equivalence", "stress", "interleaved"]
    for suite in SUITES.values():
        assert suite.phases and all(text.strip() for text in suite.phases.values())
        assert suite.default and set(suite.default) <= set(suite.phases)
        assert callable(suite.runner())
    assert list(SUITES["gpu"].phases) == ["equivalence", "equivalence_fp32", "stress", "throughput",
                                          "interleaved", "breakdown", "profile"]
    assert list(SUITES["compile"].phases) == ["reference", "vllm32", "vllm16", "serving", "http"]
    stems = {s for suite in SUITES.values() for s in suite.results}
    for path in (ROOT / "bench" / "results").glob("vllm_*.json"):  # every vLLM results file has its phase
        assert path.stem.rsplit("_", 1)[0] in stems, path.name


@pytest.mark.usefixtures("no_vllm")
def test_vllm_entry_help_without_vllm(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        vllm_main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for suite in SUITES.values():
        assert suite.help in out and all(p in out for p in suite.phases)
    for name, suite in SUITES.items():
        with pytest.raises(SystemExit) as exc:
            vllm_main([name, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert all(stem in out for stem in suite.results) and "--out" in out


@pytest.mark.usefixtures("no_vllm")
def test_vllm_entry_dispatches_phases_in_order(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    gpu = importlib.import_module("bench.vllm_bench.gpu")
    calls: list[tuple[list[str], str]] = []
    monkeypatch.setattr(gpu, "run", lambda args, phases: calls.append((phases, args.model)) or 0)
    assert vllm_main(["gpu", "stress", "equivalence", "--model", "/m"]) == 0
    assert vllm_main(["gpu", "--model", "/m"]) == 0
    assert calls == [(["stress", "equivalence"], "/m"), (["equivalence", "stress", "throughput"], "/m")]
    with pytest.raises(SystemExit) as exc:
        vllm_main(["gpu", "warp", "--model", "/m"])
    assert exc.value.code == 2 and "no phase warp" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        vllm_main(["gpu", "stress"])  # --model is required
    assert exc.value.code == 2 and "--model" in capsys.readouterr().err
    assert len(calls) == 2


# ---- every converted script explains itself --------------------------------------------------


@pytest.mark.usefixtures("no_vllm")
@pytest.mark.parametrize("script", ["cpu_decode", "language_fidelity", "arm_steering", "preference_hack", "load",
                                    "quality_eval", "soak", "http_compare"])
def test_script_help_without_vllm(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"bench.{script}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    first = module.__doc__.strip().splitlines()[0]
    assert first in out and f"python -m bench.{script}" in out and "--out" in out


def test_generator_kill_verdict_accepts_a_server_that_exits_before_readyz_is_polled() -> None:
    """The H200 fault run: the server drained and exited 70 right after its engine core's
    SIGKILL (in-flight requests failed within 0.16 s, the process was gone 0.13 s after that), so
    /readyz was never seen at 503; leaving rotation by exiting counts."""
    from bench.vllm_bench.faults import generator_kill_ok

    h200 = {"in_flight_at_kill": 58, "hung": 0, "unexpected_outcomes": [], "out_of_rotation_s": 0.3,
            "exit_code": 70, "gpu_memory_left_by_server_tree_mib": {}}
    assert generator_kill_ok(h200)
    for bad in ({"out_of_rotation_s": None}, {"out_of_rotation_s": 6.0}, {"exit_code": 0}, {"hung": 1},
                {"in_flight_at_kill": 0}, {"unexpected_outcomes": ["stream:200:internal_error"]},
                {"gpu_memory_left_by_server_tree_mib": {123: 900}}):
        assert not generator_kill_ok({**h200, **bad}), bad


def test_nucleus_edge_by_hand() -> None:
    """q = softmax(l / T) with T = 1, sorted: 0.5, 0.3, 0.15, 0.05, masses before 0, 0.5, 0.8, 0.95;
    top_p 0.8 keeps a token while the mass before it is below 0.8: the first two only."""
    from bench.vllm_bench.gpu import fmt_divergences, nucleus_edge

    l_in = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()
    e = nucleus_edge(l_in, 0.8, 1.0, tok=0)
    assert e["rank"] == 2 and not e["kept_in_ref"]
    assert e["q"] == pytest.approx(0.15) and e["mass_before"] == pytest.approx(0.8)
    assert e["last_kept_q"] == pytest.approx(0.3) and e["first_out_q"] == pytest.approx(0.15)
    assert nucleus_edge(l_in, 0.81, 1.0, tok=0)["kept_in_ref"]
    second = nucleus_edge(l_in, 0.8, 1.0, tok=3)
    assert second["rank"] == 1 and second["kept_in_ref"] and second["mass_before"] == pytest.approx(0.5)
    # temperature sharpens: T = 0.5 squares and renormalises
    q2 = torch.tensor([0.15, 0.5, 0.05, 0.3]) ** 2
    assert nucleus_edge(l_in, 0.8, 0.5, tok=1)["q"] == pytest.approx(float(q2[1] / q2.sum()))
    text = fmt_divergences([{"position": 3, "ref_logit_gap": 0.0123}, {"position": 7, "ref_logit_gap": None},
                            {"position": 11, "ref_logit_gap": float("inf"), "nucleus": e}])
    assert text == ("3: 0.012, 7: length, 11: nucleus edge (rank 2, mass before 0.8000 vs top_p 0.8; "
                    "q 0.15000 vs last kept 0.30000)")
    assert fmt_divergences([]) == "—"
