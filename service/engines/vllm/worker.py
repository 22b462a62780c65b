"""Worker extension (``worker_extension_cls``): fills the steering buffers before each step.

``alignserve_install_steering`` is called once through ``collective_rpc`` after the engine has
started. It wraps the model runner's ``_prepare_inputs`` — called every step once the persistent
batch has its final order — so that the per-token slot index is written into the model's
persistent buffer before the forward pass (the way vLLM's LoRA support maps tokens to adapters).
A steered request's vectors arrive in ``SamplingParams.extra_args``; its slots are filled on
first sight and released when the runner forgets the request. ``alignserve_capture_heads`` reads
head activations for compiling Activation-RM profiles (``capture.py`` says how).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .capture import last_token_heads, pack
from .model import SteerableQwen2DecoderLayer
from .pairing import EXTRA_KEY
from .steer_tables import SlotAllocator, build_phase_tables, steering_key, token_slots, vectors_from_args

log = logging.getLogger("alignserve.vllm.steering")


class _RunnerSteering:
    def __init__(self, runner: Any, layers: list[SteerableQwen2DecoderLayer], slots: int) -> None:
        self.runner = runner
        self.layers = layers
        self.index = layers[0].steer_index
        self.alloc = SlotAllocator(slots)
        self.host = torch.zeros(self.index.shape[0], dtype=torch.long, pin_memory=True)
        self.dirty = 0  # tokens written non-zero by the previous step
        attn = layers[0].self_attn
        self.shape = (len(layers), layers[0].hidden_size, attn.num_heads, attn.head_dim)

    def _o_proj(self, layer: int) -> torch.Tensor:
        return self.layers[layer].self_attn.o_proj.weight

    def _install(self, req_id: str, args: list[dict[str, Any]]) -> dict[str, int]:
        key = steering_key(args)
        shared = self.alloc.lookup(req_id, key)
        if shared is not None:
            return shared
        tables = build_phase_tables(vectors_from_args(args), *self.shape, self._o_proj)
        slots = self.alloc.allocate(req_id, key, list(tables))
        for phase, slot in slots.items():
            t = tables[phase]
            for li, layer in enumerate(self.layers):
                layer.resid_add[slot].copy_(t.resid_add[li])
                layer.attn_add[slot].copy_(t.attn_add[li])
                layer.head_keep[slot].copy_(t.head_keep[li])
                layer.head_repl[slot].copy_(t.head_repl[li])
        return slots

    def before_step(self, num_scheduled: np.ndarray) -> None:
        batch = self.runner.input_batch
        n = batch.num_reqs
        for rid in [r for r in self.alloc.owned if r not in self.runner.requests]:
            self.alloc.release(rid)
        per_req: list[dict[str, int] | None] = []
        any_steered = False
        for rid in batch.req_ids[:n]:
            state = self.runner.requests[rid]
            extra = state.sampling_params.extra_args if state.sampling_params is not None else None
            steer = (extra or {}).get(EXTRA_KEY, {}).get("steer") if extra else None
            slots = None
            if steer:
                owned = self.alloc.owned.get(rid)
                slots = self.alloc.by_key[owned] if owned is not None else self._install(rid, steer)
                any_steered = True
            per_req.append(slots)
        if not any_steered and not self.dirty:
            return
        total = int(num_scheduled[:n].sum())
        idx = token_slots(batch.num_computed_tokens_cpu[:n], num_scheduled[:n], batch.num_prompt_tokens[:n], per_req)
        width = max(total, self.dirty)
        self.host[:width] = 0
        self.host[:total] = torch.from_numpy(idx)
        # Asynchronous from pinned memory: a blocking copy would stall the CPU on the GPU every
        # step. Safe to reuse ``host`` next step: _prepare_inputs runs inside the runner's
        # synchronize_input_prep(), which waits for the previous step's input copies.
        self.index[:width].copy_(self.host[:width], non_blocking=True)
        self.dirty = total if any_steered else 0


class SteeringWorkerExtension:
    def alignserve_install_steering(self) -> int:
        runner = self.model_runner  # type: ignore[attr-defined]
        model = runner.get_model()
        layers = [m for m in model.modules() if isinstance(m, SteerableQwen2DecoderLayer)]
        if not layers:
            return 0
        state = _RunnerSteering(runner, layers, int(getattr(model, "steer_slots", layers[0].resid_add.shape[0])))
        original = runner._prepare_inputs

        def prepare(scheduler_output: Any, num_scheduled_tokens: np.ndarray, *a: Any, **kw: Any) -> Any:
            state.before_step(num_scheduled_tokens)
            return original(scheduler_output, num_scheduled_tokens, *a, **kw)

        runner._prepare_inputs = prepare
        runner._alignserve_steering = state
        log.info("steering installed on %d layers, %d slots", len(layers), state.alloc.free + 1)
        return len(layers)

    def alignserve_capture_heads(self, sequences: list[list[int]]) -> dict[str, Any]:
        """``[len(sequences), layers, heads * head_dim]`` float32 (packed): the ``o_proj`` input of
        every layer at each sequence's last token, unsteered. Runs between engine steps."""
        runner = self.model_runner  # type: ignore[attr-defined]
        model = runner.get_model()
        layers = [m for m in model.modules() if isinstance(m, SteerableQwen2DecoderLayer)]
        if not layers:
            raise RuntimeError("head capture needs the steerable architecture")
        with torch.inference_mode():
            acts = [last_token_heads(layers, model.model.embed_tokens, s, runner.device) for s in sequences]
        return pack(torch.stack(acts))
