"""The decoder layout table on real transformers models of every family the vLLM bench verifies.

Tiny random models are built with transformers' own config classes (``bench.vllm_archs``); for each
family ``find_layout`` must find each layer's attention out-projection, and the transformers
engine's hooks must act on exactly those modules: replacing a head by its own captured activation
changes nothing, while residual and head vectors change the logits. GPT-J (not in the table) and
bad indices are refused with typed errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bench.vllm_archs import FAMILIES, tiny_model
from service.alignment.spec import SteeringVector
from service.engines.decoder_layout import InvalidSteering, SteeringUnsupported, check_steering
from service.engines.transformers.hooks import HeadCapture, SteeringHooks, layout_of

SPECIAL = {"eos_token_id": 2, "pad_token_id": 1, "bos_token_id": 0}
IDS = torch.tensor([[5, 17, 42, 99, 7, 63]])


def _logits(model: torch.nn.Module, vectors: list[SteeringVector], head_dim: int) -> torch.Tensor:
    with torch.no_grad(), SteeringHooks(model, [vectors], head_dim, torch.float32, torch.device("cpu")):
        return model(input_ids=IDS).logits[0].float()


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_found_and_hooks_act_on_it(family: str) -> None:
    model = tiny_model(family, SPECIAL, vocab=128).eval()
    cfg = model.config.get_text_config()
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    layout = layout_of(model)
    assert layout.family == "llama-like" and len(layout.layers) == cfg.num_hidden_layers
    for layer, proj in zip(model.model.layers, layout.out_projs, strict=True):
        assert proj is layer.self_attn.o_proj
    base = _logits(model, [], head_dim)
    with torch.no_grad(), HeadCapture(model) as cap:
        model(input_ids=IDS)
    own = cap.outputs[1].view(cfg.num_attention_heads, head_dim)[2]  # layer 1, head 2, last position
    same = _logits(model, [SteeringVector(layer=1, head=2, vector=own, replace=True, position="last_prompt")],
                   head_dim)
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    resid = _logits(model, [SteeringVector(layer=0, vector=torch.randn(cfg.hidden_size, generator=g),
                                           position="all")], head_dim)
    head = _logits(model, [SteeringVector(layer=0, head=1, vector=torch.randn(head_dim, generator=g) * 3,
                                          position="all")], head_dim)
    assert (resid - base).abs().max() > 1e-3 and (head - base).abs().max() > 1e-3


def test_unknown_layout_and_bad_indices_are_refused() -> None:
    model = tiny_model("gptj", SPECIAL, vocab=128).eval()
    with pytest.raises(SteeringUnsupported, match="GPTJForCausalLM"):
        SteeringHooks(model, [[SteeringVector(layer=0, vector=torch.ones(128))]], 32, torch.float32,
                      torch.device("cpu"))
    with torch.no_grad(), SteeringHooks(model, [[]], 32, torch.float32, torch.device("cpu")):
        model(input_ids=IDS)  # no steering: no layout needed
    ok = SteeringVector(layer=1, head=3, vector=torch.ones(32))
    check_steering([ok], 2, 4, 32, 128)
    for bad, msg in ((SteeringVector(layer=2, vector=torch.ones(128)), "layer 2 outside"),
                     (SteeringVector(layer=-1, vector=torch.ones(128)), "layer -1 outside"),
                     (SteeringVector(layer=0, head=4, vector=torch.ones(32)), "head 4 outside"),
                     (SteeringVector(layer=0, head=0, vector=torch.ones(31)), "31 entries"),
                     (SteeringVector(layer=0, vector=torch.ones(127)), "127 entries")):
        with pytest.raises(InvalidSteering, match=msg):
            check_steering([ok, bad], 2, 4, 32, 128)


@pytest.mark.slow
def test_archs_serve_phase_runs_on_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The benchmark's HTTP phase (serve a tiny Llama, compile an Activation-RM profile, generate
    steered) on the transformers backend: the GPU run uses the same code with ``--backend vllm``."""
    from bench.vllm_archs import build_checkpoint, serve_phase

    from .server_proc import free_port

    model = build_checkpoint("llama3", tmp_path / "ckpt", tiny_model_dir)
    res: dict[str, Any] = {}
    serve_phase(model, tmp_path, free_port(), 240, res, backend="transformers")
    assert res.get("ok"), {k: v for k, v in res.items() if k != "log_tail"} | {"log": res.get("log_tail", "")[-800:]}
    assert res["shutdown"]["exit_code"] in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
