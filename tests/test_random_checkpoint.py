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


def test_tiny_random_reward_model_loads_as_a_reward_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    from bench.random_checkpoint import build_reward
    from service.reward.reward_model import TransformersRewardModel

    info = build_reward("tiny", tiny_model_dir, tmp_path / "rm", dtype="float32", device="cpu")
    assert info["num_labels"] == 1
    rm = TransformersRewardModel(str(tmp_path / "rm"), device="cpu", dtype="float32", max_length=64)
    try:
        convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": a}] for a in ("yes", "no thanks")]
        scores = rm.rewards(convs)
        assert len(scores) == 2 and all(isinstance(s, float) for s in scores) and scores[0] != scores[1]
    finally:
        rm.close()
