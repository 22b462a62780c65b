"""Forward hooks for the transformers engine: per-row steering and head-activation capture.

Rows of one batch carry different steering vectors, so each hook holds, per layer, a dense
``[rows, width]`` delta plus per-row position modes, and the engine tells it whether the current
forward is the prefill (many positions) or a decode step (one position). With left padding the
last prompt token of every row is the last position of the prefill.

The modules hooked — each decoder layer (residual vectors on its output) and its attention
out-projection (head vectors on its input) — are found by ``decoder_layout.find_layout``, the
same family table the vLLM engine uses; a model it does not cover raises ``SteeringUnsupported``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...alignment.spec import SteeringVector
from ..decoder_layout import DecoderLayout, check_steering, find_layout

_MODES = {"last_prompt": 0, "generated": 1, "all": 2}


@dataclass
class _LayerPlan:
    add: torch.Tensor  # [rows, width] summed deltas
    replace: torch.Tensor  # [rows, width] replacement values (heads only)
    replace_mask: torch.Tensor  # [rows, width] bool
    mode: torch.Tensor  # [rows] int per-row position mode (one mode per row and layer)


def _input_width(m: torch.nn.Module) -> int | None:
    """Input features of a linear out-projection (``nn.Linear``, or GPT-2's transposed ``Conv1D``)."""
    if isinstance(m, torch.nn.Linear):
        return int(m.in_features)
    weight = getattr(m, "weight", None)
    if type(m).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    return None


def layout_of(model: Any) -> DecoderLayout:
    """The model's decoder layers and attention out-projections (cached on the model)."""
    cached = getattr(model, "_alignserve_layout", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    cfg = model.config.get_text_config()
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    layout = find_layout(model, arch, int(cfg.num_hidden_layers), heads * head_dim, _input_width)
    model._alignserve_layout = layout
    return layout


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
        cfg = model.config.get_text_config()
        hidden = cfg.hidden_size
        heads = int(cfg.num_attention_heads)
        n = len(rows)
        if any(rows):
            layout_of(model)  # SteeringUnsupported before any work on a model it cannot steer
        for vectors in rows:
            check_steering(vectors, int(cfg.num_hidden_layers), heads, head_dim, hidden)
        self.residual: dict[int, _LayerPlan] = {}
        self.heads: dict[int, _LayerPlan] = {}
        for r, vectors in enumerate(rows):
            for v in vectors:
                plans = self.heads if v.head is not None else self.residual
                width = hidden if v.head is None else heads * head_dim
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
        if not self.active:
            return self
        layout = layout_of(self.model)
        layers, projs = layout.layers, layout.out_projs
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

            self._handles.append(projs[idx].register_forward_pre_hook(pre))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class HeadCapture:
    """Records each layer's attention out-projection input (all heads concatenated) at the last position."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> HeadCapture:
        for idx, proj in enumerate(layout_of(self.model).out_projs):
            def pre(_m, args, idx=idx):  # type: ignore[no-untyped-def]
                self.outputs[idx] = args[0][:, -1, :].detach().float().clone()

            self._handles.append(proj.register_forward_pre_hook(pre))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
