"""Random-weight checkpoints for GPU throughput benchmarks: loadable, tokenizer included, head peaked."""

from __future__ import annotations

from pathlib import Path

from bench.random_checkpoint import build
from service.engines.transformers.engine import TransformersEngine


def test_tiny_random_checkpoint_is_servable_and_peaked(tmp_path: Path, tiny_model_dir: Path) -> None:
    flat = build("tiny", tiny_model_dir, tmp_path / "flat", head_scale=1.0, dtype="float32", device="cpu")
    peaked = build("tiny", tiny_model_dir, tmp_path / "peaked", head_scale=40.0, dtype="float32", device="cpu")
    assert peaked["mean_top1_probability"] > 3 * flat["mean_top1_probability"]
    eng = TransformersEngine(str(tmp_path / "peaked"), device="cpu", dtype="float32", max_model_len=64)
    assert eng.num_layers == 2 and eng.num_heads == 4
    assert eng.prompt_size([{"role": "user", "content": "hi"}], None).plain > 0  # tokenizer + chat template
