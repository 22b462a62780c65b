"""Steering, Activation-RM capture and LA on eight decoder families: vLLM engine vs transformers engine.

For each family a tiny random-weight checkpoint is written with transformers' own config class
(no downloads; the tokenizer is the embedded Qwen2.5 model's, so the vocabulary is sized to it).
Per family and dtype (float32, bfloat16) the vLLM engine (CUDA graphs on) and the transformers
engine generate greedily for the same prompts under: no steering, residual steering, head
steering (an added and a replaced head), Linear Alignment, LA + steering; the head activations an
Activation-RM compile reads are captured by both and compared. Each family runs in its own
process (``--worker``), all at once on the one GPU. A GPT-J checkpoint (not in the layout table)
checks the refusal path: plain and LA requests serve, steering and capture raise
``SteeringUnsupported``. A last phase serves the tiny Llama with ``alignserve serve --backend
vllm``: a steered ``/generate`` and an Activation-RM compile over HTTP.

Usage (GPU host; vLLM 0.26 in /tmp/site, ``PYTHONPATH=$PWD:/tmp/site``):
  python3 -m bench.vllm_archs --tokenizer /tmp/tok --work /tmp/archs --out bench/results
Writes ``vllm_archs_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 151936  # the Qwen2.5 tokenizer's 151,665 tokens, padded as its own model pads them
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
COMMON: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                              tie_word_embeddings=False)
MAX_MODEL_LEN = 1024


def _special(tok_dir: Path | None) -> dict[str, int]:
    if tok_dir is None:  # CPU tests: a tiny vocabulary
        return {"eos_token_id": 2, "pad_token_id": 1, "bos_token_id": 0}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    return {"eos_token_id": int(eos), "pad_token_id": int(tok.pad_token_id or eos), "bos_token_id": int(eos)}


def family_config(family: str, special: dict[str, int], vocab: int = VOCAB) -> Any:
    """A tiny config of ``family`` built with transformers' own config class."""
    import transformers as tf

    c = {**COMMON, "vocab_size": vocab, **special}
    if family == "llama3":
        return tf.LlamaConfig(**{**c, "max_position_embeddings": 131072}, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    if family == "mistral":
        return tf.MistralConfig(**c, sliding_window=None, head_dim=32)
    if family == "qwen2":
        return tf.Qwen2Config(**c)
    if family == "qwen3":
        return tf.Qwen3Config(**c, head_dim=32)  # q/k norms
    if family == "gemma2":  # vLLM's Gemma-2 requires tied embeddings
        return tf.Gemma2Config(**{**c, "tie_word_embeddings": True}, head_dim=32, query_pre_attn_scalar=32,
                               sliding_window=32, layer_types=["sliding_attention", "full_attention"],
                               attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**c, head_dim=32, query_pre_attn_scalar=32, sliding_window=32,
                                   layer_types=["sliding_attention", "full_attention"])
    if family == "phi3":
        return tf.Phi3Config(**c)
    if family == "mixtral":
        return tf.MixtralConfig(**c, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
    if family == "gptj":  # not in decoder_layout's table: the refusal path
        return tf.GPTJConfig(vocab_size=vocab, n_embd=128, n_layer=2, n_head=4, rotary_dim=16,
                             n_positions=4096, tie_word_embeddings=False, **special)
    raise ValueError(family)


FAMILIES = ("llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mixtral")


def tiny_model(family: str, special: dict[str, int], vocab: int = VOCAB, seed: int = 0) -> Any:
    """Random weights, larger than the default init so greedy argmaxes are not near-ties."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, special, vocab), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
        if model.config.get_text_config().tie_word_embeddings:
            # tied and scaled by sqrt(hidden) (Gemma), large embeddings make every step copy its input
            # token; small ones leave the stream to the layers
            model.get_input_embeddings().weight.normal_(0.0, 0.03)
    return model


def build_checkpoint(family: str, out: Path, tok_dir: Path) -> Path:
    from transformers import GenerationConfig

    path = out / family
    if (path / "config.json").exists():
        return path
    special = _special(tok_dir)
    model = tiny_model(family, special)
    model.save_pretrained(path)
    GenerationConfig(eos_token_id=[special["eos_token_id"]], pad_token_id=special["pad_token_id"]).save_pretrained(path)
    for f in TOKENIZER_FILES:
        if (tok_dir / f).exists():
            shutil.copy(tok_dir / f, path / f)
    return path


# ---- one family, both dtypes (runs in its own process) ------------------------------------------
def steering_for(hidden: int, head_dim: int, layers: int) -> dict[str, tuple[Any, ...]]:
    from service.alignment.spec import SteeringVector

    g = torch.Generator().manual_seed(7)
    resid = (SteeringVector(layer=layers - 1, vector=torch.randn(hidden, generator=g) * 1.5),
             SteeringVector(layer=0, vector=torch.randn(hidden, generator=g) * 0.5, position="all"))
    heads = (SteeringVector(layer=0, head=1, vector=torch.randn(head_dim, generator=g) * 3.0, position="all"),
             SteeringVector(layer=layers - 1, head=2, vector=torch.randn(head_dim, generator=g) * 3.0, replace=True))
    return {"resid": resid, "heads": heads, "both": resid + heads}


def _compare(ref: Any, texts: list[str], max_tokens: int, want: list[Any], got: list[Any], la: Any,
             steer: tuple[Any, ...]) -> dict[str, Any]:
    from bench.vllm_bench.common import request
    from bench.vllm_bench.gpu import first_divergence, margin_at

    exact, matched, total, divs = 0, 0, 0, []
    for i, (r, g) in enumerate(zip(want, got, strict=True)):
        d = first_divergence(r.token_ids, g.token_ids)
        n = max(len(r.token_ids), len(g.token_ids))
        total += n
        if d is None:
            exact += 1
            matched += n
            continue
        matched += d
        at: dict[str, Any] = {"ref_logit_gap": None}
        if d < min(len(r.token_ids), len(g.token_ids)):
            at = margin_at(ref, request(i, texts[i], max_tokens, la, steer), r.token_ids[:d], r.token_ids[d],
                           g.token_ids[d])
        divs.append({"prompt": i, "position": d, **at})
    return {"identical": exact, "prompts": len(want), "token_match": matched / max(total, 1), "divergences": divs}


def _capture_stats(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    a, b = got.flatten(2).double(), ref.flatten(2).double()
    rel = (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"max_abs": float((a - b).abs().max()), "max_rel": float(rel.max()), "min_cos": float(cos.min())}


def run_family(family: str, model_dir: Path, dtypes: list[str], n_prompts: int, max_tokens: int) -> dict[str, Any]:
    from bench.harness import free_gpu
    from bench.vllm_bench.common import PRINCIPLE, prompts, request
    from service.alignment.linear_alignment import LinearAlignmentConfig
    from service.alignment.spec import SteeringVector
    from service.engines.decoder_layout import InvalidSteering, SteeringUnsupported
    from service.engines.transformers.engine import TransformersEngine
    from service.engines.vllm.engine import VLLMEngine, VLLMSettings

    data = json.loads((ROOT / "bench" / "data" / "french_profile.json").read_text())
    convs = [[{"role": "user", "content": q}] for q, _, _ in data["train"][:4]]
    completions = [fr for _, fr, _ in data["train"][:4]]
    texts = prompts(n_prompts)
    la = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    res: dict[str, Any] = {"family": family, "dtypes": {}}
    for dtype in dtypes:
        t0 = time.perf_counter()
        row: dict[str, Any] = {}
        res["dtypes"][dtype] = row
        ref = TransformersEngine(str(model_dir), device="cuda", dtype=dtype, max_model_len=MAX_MODEL_LEN)
        res["architecture"] = ref.model.config.architectures[0]
        cfg = ref.model.config.get_text_config()
        steer = steering_for(int(cfg.hidden_size), ref.head_dim, ref.num_layers)
        variants: dict[str, tuple[Any, tuple[Any, ...]]] = {
            "base": (None, ()), "resid": (None, steer["resid"]), "heads": (None, steer["heads"]),
            "la": (la, ()), "la+steer": (la, steer["both"])}
        if family == "gptj":
            variants = {"base": (None, ()), "la": (la, ())}
        want = {name: [ref.generate([request(i, t, max_tokens, v_la, v_st)])[0] for i, t in enumerate(texts)]
                for name, (v_la, v_st) in variants.items()}
        changed = {name: sum(a.token_ids != b.token_ids for a, b in zip(w, want["base"], strict=True))
                   for name, w in want.items()}
        ref_caps = None
        if family != "gptj":
            ref_caps = [ref.capture_head_activations(convs), ref.capture_head_activations(convs, completions)]
        eng = None
        try:
            eng = VLLMEngine(str(model_dir), VLLMSettings(
                max_model_len=MAX_MODEL_LEN, gpu_memory_utilization=0.05, max_num_seqs=32, dtype=dtype,
                cudagraph_sizes=[1, 2, 4, 8, 16, 32], strict_pairs=True,
                extra={"kv_cache_memory_bytes": 1 << 30}))
            row["engine_start_s"] = round(time.perf_counter() - t0, 1)
            row["steering_info"] = eng.steering_info
            row["variants"] = {}
            for name, (v_la, v_st) in variants.items():
                got = eng.generate([request(i, t, max_tokens, v_la, v_st) for i, t in enumerate(texts)])
                row["variants"][name] = {**_compare(ref, texts, max_tokens, want[name], got, v_la, v_st),
                                         "changed_vs_base_in_reference": changed[name]}
            if ref_caps is not None:
                caps = [eng.capture_head_activations(convs), eng.capture_head_activations(convs, completions)]
                row["capture"] = {"contexts": _capture_stats(caps[0], ref_caps[0]),
                                  "with_completions": _capture_stats(caps[1], ref_caps[1]),
                                  "shape": list(caps[0].shape)}
            checks: dict[str, str] = {}
            bad = {"layer_out_of_range": SteeringVector(layer=ref.num_layers, vector=torch.ones(int(cfg.hidden_size))),
                   "head_out_of_range": SteeringVector(layer=0, head=ref.num_heads, vector=torch.ones(ref.head_dim))}
            if family == "gptj":
                bad = {"steering_on_unsupported": SteeringVector(layer=0, vector=torch.ones(int(cfg.hidden_size)))}
            for name, vec in bad.items():
                try:
                    eng.generate([request(0, texts[0], 4, None, (vec,))])
                    checks[name] = "accepted (wrong)"
                except (InvalidSteering, SteeringUnsupported) as exc:
                    checks[name] = f"{type(exc).__name__}: {exc}"
            if family == "gptj":
                try:
                    eng.capture_head_activations(convs)
                    checks["capture_on_unsupported"] = "accepted (wrong)"
                except SteeringUnsupported as exc:
                    checks["capture_on_unsupported"] = f"{type(exc).__name__}: {exc}"
            after = eng.generate([request(0, texts[0], 8)])[0]
            checks["serves_after_bad_input"] = f"ok ({after.completion_tokens} tokens)"
            row["bad_input"] = checks
        except Exception as exc:  # one dtype or family failing must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()[-3000:]
        finally:
            if eng is not None:
                eng.close()
            del ref
            free_gpu()
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{family} {dtype}] done in {row['wall_s']}s {'ERROR ' + row['error'] if 'error' in row else ''}",
              flush=True)
    return res


# ---- the tiny Llama served over HTTP ----------------------------------------------------------
def serve_phase(model_dir: Path, work: Path, port: int, budget_s: float, res: dict[str, Any],
                backend: str = "vllm") -> None:
    """Fills ``res`` as it goes (``ready_s`` as soon as the server answers)."""
    import httpx

    from bench.harness import ServerProcess

    data = json.loads((ROOT / "bench" / "data" / "french_profile.json").read_text())
    examples = [{"prompt": q, "response": r, "label": lab} for q, fr, en in data["train"]
                for r, lab in ((fr, "good"), (en, "bad"))]
    url = f"http://127.0.0.1:{port}"
    db = work / "serve.db"
    db.unlink(missing_ok=True)
    log = work / "serve.log"
    gpu = ["--gpu-memory-utilization", "0.06"] if backend == "vllm" else ["--device", "cpu", "--dtype", "float32"]
    proc = ServerProcess(["--backend", backend, "--model", str(model_dir), "--home", str(work / "home"),
                         "--db-url", f"sqlite:///{db}", "--max-model-len", str(MAX_MODEL_LEN), *gpu], port, log)
    res["model"] = str(model_dir)
    t0 = time.monotonic()
    try:
        res["ready_s"] = round(proc.wait_ready(300), 1)
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/profiles", json={"name": "french", "rubric": data["rubric"], "activation_rm": {
                "examples": examples, "num_heads": 4, "iterations": 10, "steer_strength": 4.0}})
            res["create_status"] = r.status_code
            res["create_body"] = r.json() if r.status_code >= 400 else None
            job = r.json().get("id")
            st: dict[str, Any] = {}
            while job and time.monotonic() - t0 < budget_s:
                st = c.get(f"/jobs/{job}").json()
                if st.get("status") in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(1)
            res["job"] = {k: st.get(k) for k in ("status", "phase", "error")}
            prof = c.get("/profiles/french").json()
            res["compiled"] = {k: (prof.get("compiled") or {}).get(k) for k in
                               ("zero_shot_pair_accuracy", "patched_pair_accuracy", "compile_s", "heads")}
            out = {}
            for strength in (0.0, 4.0):
                g = c.post("/generate", json={"prompt": "What is the capital of Spain?", "max_tokens": 16,
                                              "profile": "french", "steer_strength": strength})
                body = g.json()
                out[str(strength)] = {"status": g.status_code, "text": body.get("text"),
                                      "method": (body.get("alignment") or {}).get("method"),
                                      "error": body.get("error")}
            res["steered_generate"] = out
    except Exception as exc:  # RuntimeError from wait_ready included
        res["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        res["shutdown"] = proc.stop()
        res["log_tail"] = log.read_text(errors="replace")[-2500:] if log.exists() else ""
    gen = res.get("steered_generate", {})
    res["ok"] = (res.get("job", {}).get("status") == "succeeded" and gen.get("4.0", {}).get("status") == 200
                 and gen.get("4.0", {}).get("method") == "activation_steering")
    res["done"] = True


# ---- driver -----------------------------------------------------------------------------------
def _device() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _fmt_divs(divs: list[dict[str, Any]]) -> str:
    from bench.vllm_bench.gpu import fmt_divergences

    return fmt_divergences(divs)


def markdown(payload: dict[str, Any]) -> str:
    lines = ["# Steering, capture and LA across decoder families — vLLM engine vs transformers engine\n",
             f"Device: {payload['device']}. vLLM {payload.get('vllm')}, torch {payload.get('torch')}, "
             f"transformers {payload.get('transformers')}. Tiny random-weight checkpoints (2 layers, hidden 128, "
             "4 query / 2 KV heads, head_dim 32; the embedded Qwen2.5 tokenizer) written with transformers' "
             f"config classes; {payload['prompts']} prompts, {payload['max_tokens']} greedy tokens; vLLM with "
             "CUDA graphs (sizes 1–32) and torch.compile, strict LA pairing. resid = residual vectors (last "
             "layer generated, layer 0 all); heads = an added head (layer 0, all) and a replaced head (last "
             "layer, generated); la+steer = LA r=3 with both. Gap = the reference's logit difference between "
             "its token and vLLM's at the first divergence (small = a near-tie); 'changed' = prompts whose "
             "reference output differs from the unsteered one (the steering does something).\n",
             "| family (architecture) | dtype | variant | identical | token match | first divergences "
             "(position: gap) | changed |", "|---|---|---|---|---|---|---|"]
    caps = ["", "Head capture (the Activation-RM compile's activations; vLLM vs transformers, same dtype):", "",
            "| family | dtype | layout found | contexts max abs / min cos | with completions max abs / min cos |",
            "|---|---|---|---|---|"]
    bad = ["", "Bad input on the vLLM engine:", ""]
    for fam in payload["families"]:
        name = f"{fam['family']} ({fam.get('architecture', '?')})"
        if "error" in fam and not fam.get("dtypes"):
            lines.append(f"| {name} | – | – | **failed**: {fam['error'][:200]} | | | |")
            continue
        for dtype, row in fam.get("dtypes", {}).items():
            if "error" in row:
                lines.append(f"| {name} | {dtype} | – | **error**: {row['error'][:200]} | | | |")
            for vname, v in row.get("variants", {}).items():
                lines.append(f"| {name} | {dtype} | {vname} | {v['identical']}/{v['prompts']} | "
                             f"{v['token_match']:.3f} | {_fmt_divs(v['divergences'])} | "
                             f"{v['changed_vs_base_in_reference']} |")
            info = (row.get("steering_info") or [{}])[0]
            found = f"{info.get('family')} (TP {info.get('tp_size')})" if info.get("supported") else \
                f"no: {info.get('reason', '?')}"
            if "capture" in row:
                c = row["capture"]
                caps.append(f"| {fam['family']} | {dtype} | {found} | {c['contexts']['max_abs']:.2e} / "
                            f"{c['contexts']['min_cos']:.6f} | {c['with_completions']['max_abs']:.2e} / "
                            f"{c['with_completions']['min_cos']:.6f} |")
            elif "steering_info" in row:
                caps.append(f"| {fam['family']} | {dtype} | {found} | – | – |")
            for check, outcome in row.get("bad_input", {}).items():
                bad.append(f"- {fam['family']} {dtype}, {check}: {outcome}")
    lines += caps + bad
    s = payload.get("serve")
    if s:
        lines += ["", "## `alignserve serve --backend vllm --model <tiny Llama folder>`", "",
                  f"- ready in {s.get('ready_s')} s; `POST /profiles` (Activation-RM, 24 examples, 4 heads, "
                  f"10 iterations): {s.get('create_status')}; job {s.get('job')}",
                  f"- compiled: {s.get('compiled')}",
                  f"- steered `/generate` (strength 0 vs 4): {json.dumps(s.get('steered_generate'))}",
                  f"- ok: {s.get('ok')}; error: {s.get('error')}"]
    cmds = payload["command"] if isinstance(payload["command"], list) else [payload["command"]]
    lines += ["", "Command (GPU host, after installing vLLM 0.26 into /tmp/site; `PYTHONPATH=/tmp/site:$PWD "
              "VLLM_USE_FLASHINFER_SAMPLER=0`):", ""] + [f"- `{c}`" for c in cmds]
    lines += [""] + [f"{n}\n" for n in payload.get("notes", [])]
    return "\n".join(lines)


def add_args(ap: argparse.ArgumentParser, with_out: bool = True) -> None:
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with the embedded model's tokenizer files")
    ap.add_argument("--work", type=Path, default=Path("/tmp/archs"))
    if with_out:  # ``python -m bench.vllm_bench archs`` adds its own --out (the same folder)
        ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--families", default=",".join((*FAMILIES, "gptj")))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--deadline-s", type=float, default=480, help="stop waiting for workers after this")
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--worker", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    return run(ap.parse_args(argv))


def run(a: argparse.Namespace) -> int:
    """The whole benchmark (or, with ``--worker FAMILY``, one family in this process)."""
    if a.worker:
        model = build_checkpoint(a.worker, a.work / "ckpt", a.tokenizer)
        res = run_family(a.worker, model, a.dtypes.split(","), a.prompts, a.max_tokens)
        (a.work / f"{a.worker}.json").write_text(json.dumps(res, indent=1))
        return 0
    t0 = time.monotonic()
    a.work.mkdir(parents=True, exist_ok=True)
    fams = a.families.split(",")
    serve: dict[str, Any] | None = None
    server_thread = None
    box: dict[str, Any] = {}
    if not a.no_serve:
        import threading

        llama = build_checkpoint("llama3", a.work / "ckpt", a.tokenizer)
        server_thread = threading.Thread(target=serve_phase, args=(llama, a.work, a.port, a.deadline_s - 60, box),
                                         daemon=True)
        server_thread.start()
        # vLLM sizes its KV cache by profiling free GPU memory, which other processes must not
        # change meanwhile: the workers start once the server is up (they pass a fixed KV size)
        while server_thread.is_alive() and "ready_s" not in box and time.monotonic() - t0 < 240:
            time.sleep(1)
        print(f"server ready after {time.monotonic() - t0:.0f}s: {box.get('ready_s')} {box.get('error', '')}",
              flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", "TORCHINDUCTOR_COMPILE_THREADS": "2"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for f in fams:
        (a.work / f"{f}.json").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "bench.vllm_archs", "--worker", f, "--tokenizer", str(a.tokenizer), "--work",
               str(a.work), "--dtypes", a.dtypes if f != "gptj" else "bfloat16", "--prompts", str(a.prompts),
               "--max-tokens", str(a.max_tokens)]
        procs[f] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=(a.work / f"{f}.log").open("wb"),
                                    stderr=subprocess.STDOUT)
    families = []
    for f, p in procs.items():
        left = max(1.0, a.deadline_s - (time.monotonic() - t0))
        try:
            p.wait(left)
        except subprocess.TimeoutExpired:
            p.kill()
        part = a.work / f"{f}.json"
        if part.exists():
            families.append(json.loads(part.read_text()))
        else:
            tail = (a.work / f"{f}.log").read_text(errors="replace")[-2500:]
            families.append({"family": f, "error": f"worker exited {p.returncode} without results", "log_tail": tail})
        print(f"{f}: exit {p.returncode}", flush=True)
    if server_thread is not None:
        server_thread.join(max(1.0, a.deadline_s + 30 - (time.monotonic() - t0)))
        serve = box if box.get("done") else {**box, "error": box.get("error") or "serve phase did not finish"}
    import transformers

    try:
        import vllm

        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = None
    payload = {"device": _device(), "vllm": vllm_version, "torch": torch.__version__,
               "transformers": transformers.__version__, "prompts": a.prompts, "max_tokens": a.max_tokens,
               "families": families, "serve": serve, "wall_s": round(time.monotonic() - t0, 1),
               "command": "python3 -m bench.vllm_archs " + " ".join(sys.argv[1:])}
    slug = "h200" if "H200" in payload["device"] else "h100" if "H100" in payload["device"] else "gpu"
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"vllm_archs_{slug}.json").write_text(json.dumps(payload, indent=1))
    md = markdown(payload)
    (a.out / f"vllm_archs_{slug}.md").write_text(md)
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

