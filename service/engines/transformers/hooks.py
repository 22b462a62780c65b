"""Forward hooks for the transformers engine: per-row steering and head-activation capture.

Rows of one batch carry different steering vectors, so each hook holds, per layer, a dense
``[rows, width]`` delta plus per-row position modes, and the engine tells it whether the current
forward is the prefill (many positions) or a decode step (one position). With left padding the
last prompt token of every row is the last position of the prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...alignment.spec import SteeringVector

_MODES = {"last_prompt": 0, "generated": 1, "all": 2}


@dataclass
class _LayerPlan:
    add: torch.Tensor  # [rows, width] summed deltas
    replace: torch.Tensor  # [rows, width] replacement values (heads only)
    replace_mask: torch.Tensor  # [rows, width] bool
    mode: torch.Tensor  # [rows] int per-row position mode (one mode per row and layer)


def decoder_layers(model: Any) -> Any:
    return model.model.layers


class SteeringHooks:
    """Installs hooks for one batch; use as a context manager. ``phase`` is set by the engine."""

    def __init__(
        self,
        model: Any,
        rows: Sequence[Sequence[SteeringVector]],
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.model = model
        self.phase = "prefill"
        self.head_dim = head_dim
        hidden = model.config.hidden_size
        n = len(rows)
        self.residual: dict[int, _LayerPlan] = {}
        self.heads: dict[int, _LayerPlan] = {}
        for r, vectors in enumerate(rows):
            for v in vectors:
                plans = self.heads if v.head is not None else self.residual
                width = hidden if v.head is None else model.config.num_attention_heads * head_dim
                plan = plans.get(v.layer)
                if plan is None:
                    plan = _LayerPlan(
                        add=torch.zeros(n, width, dtype=dtype, device=device),
                        replace=torch.zeros(n, width, dtype=dtype, device=device),
                        replace_mask=torch.zeros(n, width, dtype=torch.bool, device=device),
                        mode=torch.full((n,), -1, dtype=torch.long, device=device),
                    )
                    plans[v.layer] = plan
                vec = (v.vector.to(device=device, dtype=torch.float32) * v.scale).to(dtype)
                sl = slice(None) if v.head is None else slice(v.head * head_dim, (v.head + 1) * head_dim)
                if v.replace:
                    plan.replace[r, sl] = vec
                    plan.replace_mask[r, sl] = True
                else:
                    plan.add[r, sl] += vec
                plan.mode[r] = _MODES[v.position]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def active(self) -> bool:
        return bool(self.residual or self.heads)

    def select_rows(self, keep: torch.Tensor) -> None:
        """Follow the engine when it drops finished rows from the batch."""
        for plans in (self.residual, self.heads):
            for layer, p in plans.items():
                plans[layer] = _LayerPlan(p.add[keep], p.replace[keep], p.replace_mask[keep], p.mode[keep])

    def _position_mask(self, plan: _LayerPlan, seq_len: int) -> torch.Tensor:
        """``[rows, seq]`` bool: where this layer's vectors apply in the current forward."""
        rows = plan.mode.shape[0]
        pos = torch.zeros(rows, seq_len, dtype=torch.bool, device=plan.mode.device)
        if self.phase == "prefill":
            pos[:, -1] = plan.mode >= 0  # last prompt token: every mode
            pos |= (plan.mode == _MODES["all"]).unsqueeze(1)
        else:
            pos[:] = (plan.mode >= _MODES["generated"]).unsqueeze(1)
        return pos

    def _apply(self, x: torch.Tensor, plan: _LayerPlan) -> torch.Tensor:
        where = self._position_mask(plan, x.shape[1]).unsqueeze(-1)  # [rows, seq, 1]
        out = x + where * plan.add.unsqueeze(1)
        rep = where & plan.replace_mask.unsqueeze(1)
        return torch.where(rep, plan.replace.unsqueeze(1).expand_as(out), out)

    def __enter__(self) -> SteeringHooks:
        layers = decoder_layers(self.model)
        # the hooks look their plan up at call time: ``select_rows`` replaces plans mid-generation
        for idx in self.residual:
            def post(_m, _args, output, idx=idx):  # type: ignore[no-untyped-def]
                plan = self.residual[idx]
                if isinstance(output, tuple):
                    return (self._apply(output[0], plan),) + tuple(output[1:])
                return self._apply(output, plan)

            self._handles.append(layers[idx].register_forward_hook(post))
        for idx in self.heads:
            def pre(_m, args, idx=idx):  # type: ignore[no-untyped-def]
                return (self._apply(args[0], self.heads[idx]),) + tuple(args[1:])

            self._handles.append(layers[idx].self_attn.o_proj.register_forward_pre_hook(pre))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class HeadCapture:
    """Records the ``o_proj`` input (all heads concatenated) at the last position of each layer."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> HeadCapture:
        for idx, layer in enumerate(decoder_layers(self.model)):
            def pre(_m, args, idx=idx):  # type: ignore[no-untyped-def]
                self.outputs[idx] = args[0][:, -1, :].detach().float().clone()

            self._handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
