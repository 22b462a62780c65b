"""Random-weight Qwen2 checkpoints at real shapes, for throughput benchmarks on the GPU host.

Throughput does not depend on weight values, so a 7B-shaped model need not be carried to an
offline GPU host (15 GB): it is built there, with transformers' own ``Qwen2Config``, and saved as
an HF folder with the embedded model's tokenizer. The output head is scaled so next-token
distributions are peaked like a trained model's: with near-uniform logits Linear Alignment's
plausibility nucleus would cover thousands of tokens and take its slow path, misstating its cost.

With ``--reward-out`` it also writes a random one-label Qwen2 sequence-classification model of the
same shape: the kind of folder ``--reward-model`` takes (the shipped head is served as one), so a GPU
soak of every route needs no real weights carried to the host.

Usage (GPU host): python -m bench.random_checkpoint --shape 7b --tokenizer <folder> --out /tmp/rand-7b
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch

# Qwen2.5 shapes (hidden, layers, heads, kv heads, intermediate); "tiny" is for tests.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864),
    "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944),
}


def peak_ratio(logits: torch.Tensor) -> float:
    """Mean probability of the most likely token: ~1/vocab for a uniform head, near 1 when peaked."""
    return float(torch.softmax(logits.float(), dim=-1).max(dim=-1).values.mean())


def qwen2_config(shape: str, tok: Any, dtype: str, **extra: Any) -> Any:
    """A Qwen2.5-like config of ``shape`` around the tokenizer ``tok`` (its vocabulary and special ids)."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=max(len(tok), 64), max_position_embeddings=32768, tie_word_embeddings=False,
                       rms_norm_eps=1e-6, rope_theta=1_000_000.0, torch_dtype=dtype,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPES[shape], **extra)


def build(shape: str, tokenizer_dir: Path, out: Path, head_scale: float = 12.0, dtype: str = "bfloat16",
          device: str = "cuda" if torch.cuda.is_available() else "cpu", seed: int = 0) -> dict[str, Any]:
    """Write a random Qwen2 of ``shape`` to ``out`` (HF folder + the tokenizer); report its peakiness."""
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = qwen2_config(shape, tok, dtype)
    vocab = cfg.vocab_size
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(getattr(torch, dtype))
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        ids = torch.tensor([tok.encode("Why is the sky blue? Answer briefly.")], device=device)
        peak = peak_ratio(model(input_ids=ids).logits[0])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))  # tokenizer files and the chat template
    if (tokenizer_dir / "generation_config.json").exists():  # EOS ids as the real model has them
        shutil.copy(tokenizer_dir / "generation_config.json", out / "generation_config.json")
    params = sum(p.numel() for p in model.parameters())
    del model
    return {"shape": shape, "params": params, "vocab": vocab, "head_scale": head_scale, "dtype": dtype,
            "mean_top1_probability": round(peak, 4), "build_s": round(time.perf_counter() - t0, 1), "path": str(out)}


def build_reward(shape: str, tokenizer_dir: Path, out: Path, dtype: str = "bfloat16",
                 device: str = "cuda" if torch.cuda.is_available() else "cpu", seed: int = 1) -> dict[str, Any]:
    """Write a random one-label Qwen2 reward model (``Qwen2ForSequenceClassification``) of ``shape``."""
    from transformers import AutoTokenizer, Qwen2ForSequenceClassification

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cfg = qwen2_config(shape, tok, dtype, num_labels=1, pad_token_id=pad)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForSequenceClassification(cfg).to(getattr(torch, dtype))
    with torch.no_grad():
        ids = torch.tensor([tok.encode("Why is the sky blue? Answer briefly.")], device=device)
        score = float(model(input_ids=ids).logits.float().reshape(-1)[0])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    del model
    return {"shape": shape, "kind": "reward", "num_labels": 1, "dtype": dtype, "sample_score": round(score, 4),
            "build_s": round(time.perf_counter() - t0, 1), "path": str(out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with the embedded model's tokenizer files")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--head-scale", type=float, default=12.0, help="output-head multiplier (peakier when larger)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--reward-out", type=Path, help="also write a random one-label reward model of the shape here")
    args = ap.parse_args(argv)
    print(build(args.shape, args.tokenizer, args.out, args.head_scale, args.dtype), flush=True)
    if args.reward_out:
        print(build_reward(args.shape, args.tokenizer, args.reward_out, args.dtype), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
