"""vLLM's GPU worker with steering attached at load time (``worker_cls``; any decoder architecture).

``AlignserveWorker.load_model`` lets vLLM load the model as usual, then — before vLLM compiles it
and captures CUDA graphs — finds each decoder layer and its attention out-projection
(``decoder_layout.find_layout``: the family name table, verified against the config: every
out-projection must be a ``RowParallelLinear`` taking ``heads * head_dim`` inputs) and wraps them
(``steering.attach``). Where no layout verifies, nothing is wrapped: the model serves plain and
Linear-Alignment requests, and ``alignserve_steering_info`` tells the engine why steering is off.
The runner's ``_prepare_inputs`` is wrapped to write the per-token slot index every step
(``runner_steering``). ``alignserve_capture_heads`` reads head activations for Activation-RM
compiles (``capture.py``). Methods are called through ``collective_rpc``: on every rank.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch import nn
from vllm.distributed import get_tensor_model_parallel_rank
from vllm.forward_context import set_forward_context
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.v1.worker.gpu_worker import Worker

from ..decoder_layout import DecoderLayout, SteeringUnsupported, find_layout
from .capture import last_token_heads, pack
from .runner_steering import RunnerSteering
from .sharding import HeadShard, kv_heads_per_rank
from .steering import attach

log = logging.getLogger("alignserve.vllm.steering")
DEFAULT_SLOTS = 3 * 64 + 1


def _row_parallel_input(m: nn.Module) -> int | None:
    return int(m.input_size) if isinstance(m, RowParallelLinear) else None


class _Installed:
    """What ``load_model`` attached (or why nothing was)."""

    def __init__(self, info: dict[str, Any], layout: DecoderLayout | None = None,
                 steering: RunnerSteering | None = None, attn: list[nn.Module] | None = None) -> None:
        self.info, self.layout, self.steering, self.attn = info, layout, steering, attn or []


def _attention_of(layer: nn.Module) -> nn.Module | None:
    found = [m for m in layer.modules() if isinstance(m, Attention)]
    return found[0] if len(found) == 1 else None


def install(runner: Any, vllm_config: Any) -> _Installed:
    mc, pc = vllm_config.model_config, vllm_config.parallel_config
    arch = (getattr(mc, "architectures", None) or ["unknown architecture"])[0]
    heads = int(mc.model_arch_config.total_num_attention_heads)
    kv_heads, head_dim = int(mc.get_total_num_kv_heads()), int(mc.get_head_size())
    num_layers, hidden = int(mc.get_total_num_hidden_layers()), int(mc.get_hidden_size())
    info: dict[str, Any] = {"architecture": arch, "supported": False, "layers": num_layers, "heads": heads,
                            "head_dim": head_dim, "hidden": hidden, "tp_size": int(pc.tensor_parallel_size),
                            "rank": int(get_tensor_model_parallel_rank())}
    model = runner.get_model()
    try:
        if pc.pipeline_parallel_size > 1:
            raise SteeringUnsupported(arch, "pipeline parallelism (layers split over stages) is not supported")
        layout = find_layout(model, arch, num_layers, heads * head_dim, _row_parallel_input)
        projs: list[Any] = layout.out_projs
        if len({(p.tp_rank, p.tp_size, p.input_is_parallel) for p in projs}) != 1:
            raise SteeringUnsupported(arch, "out-projections are sharded differently across layers")
        shard = HeadShard(int(projs[0].tp_rank), int(projs[0].tp_size), heads, head_dim,
                          bool(projs[0].input_is_parallel))
        if int(projs[0].input_size_per_partition if shard.parallel else projs[0].input_size) != shard.width:
            raise SteeringUnsupported(arch, "the out-projection's input is not sharded by whole heads")
    except SteeringUnsupported as exc:
        log.warning("%s", exc)
        return _Installed({**info, "reason": exc.reason})
    extra = vllm_config.additional_config if isinstance(vllm_config.additional_config, dict) else {}
    slots = int(extra.get("alignserve_steer_slots", DEFAULT_SLOTS))
    max_tokens = max(int(vllm_config.scheduler_config.max_num_batched_tokens), int(mc.max_model_len)) + 1024
    bufs = attach(layout.layers, layout.out_projs, max_tokens=max_tokens, slots=slots, hidden=hidden,
                  width=shard.width, dtype=mc.dtype, device=runner.device)
    steering = RunnerSteering(runner, bufs, shard, hidden)
    attn = [_attention_of(layer) for layer in layout.layers]
    capture: str | None = None
    if any(a is None for a in attn):
        capture = "a decoder layer without exactly one vLLM Attention module"
    elif any((a.num_heads, a.num_kv_heads) != (shard.local_heads, kv_heads_per_rank(kv_heads, shard.tp_size))
             for a in attn if a is not None):
        capture = "attention heads are not sharded the way the out-projection's input is"
    log.info("steering attached to %d %s layers (%s.N.%s), rank %d/%d, %d slots", num_layers, layout.family,
             layout.layers_path, layout.out_proj_path, shard.rank, shard.tp_size, slots)
    info.update(supported=True, family=layout.family, parallel=shard.parallel, width=shard.width, slots=slots,
                capture=capture)
    return _Installed(info, layout, steering, [a for a in attn if a is not None])


class AlignserveWorker(Worker):
    alignserve: _Installed

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)
        self.alignserve = install(self.model_runner, self.vllm_config)
        steering = self.alignserve.steering
        if steering is None:
            return
        runner = self.model_runner
        original = runner._prepare_inputs

        def prepare(scheduler_output: Any, num_scheduled_tokens: np.ndarray, *a: Any, **kw: Any) -> Any:
            steering.before_step(num_scheduled_tokens)
            return original(scheduler_output, num_scheduled_tokens, *a, **kw)

        runner._prepare_inputs = prepare

    def alignserve_steering_info(self) -> dict[str, Any]:
        return dict(self.alignserve.info)

    def alignserve_capture_heads(self, sequences: list[list[int]]) -> dict[str, Any]:
        """``[len(sequences), layers, width]`` float32 (packed): every out-projection's input at each
        sequence's last token, unsteered — this rank's heads. Runs between engine steps."""
        inst = self.alignserve
        if inst.layout is None or inst.steering is None or inst.info.get("capture"):
            raise RuntimeError(f"head capture unavailable: {inst.info.get('reason') or inst.info.get('capture')}")
        model = self.model_runner.get_model()
        config = self.vllm_config

        def forward(ids: Any, positions: Any) -> None:
            with set_forward_context(None, config, num_tokens=int(ids.shape[0]), skip_compiled=True):
                model(input_ids=ids, positions=positions)

        longest = max((len(s) for s in sequences), default=0)
        with inst.steering.identity(longest):
            acts = last_token_heads(forward, inst.attn, inst.layout.out_projs, sequences, self.model_runner.device)
        return pack(acts)
