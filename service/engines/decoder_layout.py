"""Where steering attaches in a decoder model, found from the model's own module tree.

Steering needs two modules per decoder layer, which every decoder architecture has under some
name: the *layer* itself (its output is the residual stream after the layer: residual vectors are
added there) and the attention *out-projection* (its input is the concatenation of the per-head
attention outputs: head vectors replace or add there). The names differ by family, so
:data:`FAMILIES` lists them; :func:`find_layout` tries each entry and *verifies* it against the
config (one layer per ``num_hidden_layers``, every out-projection taking ``num_heads * head_dim``
inputs) before accepting it. Both engines use the same table: transformers and vLLM name these
modules alike. A model where no entry verifies gets :class:`SteeringUnsupported`; plain and
Linear-Alignment requests do not need any of this and keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..alignment.spec import SteeringVector
from .base import RequestRejected


class SteeringUnsupported(RequestRejected):
    """Steering or an Activation-RM compile was asked of a model whose layout was not found (422
    ``steering_unsupported``; plain and LA requests keep serving)."""

    def __init__(self, architecture: str, reason: str) -> None:
        super().__init__("steering_unsupported", f"steering is not supported on {architecture}: {reason}")
        self.architecture = architecture
        self.reason = reason


class InvalidSteering(RequestRejected):
    """A steering vector names a layer or head the model does not have, or has the wrong length (422)."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_steering", message)


@dataclass(frozen=True)
class Family:
    name: str
    examples: str  # architectures known to use these names (documentation)
    layers: tuple[str, ...]  # dotted paths, from the model root, of the decoder layer list
    out_proj: str  # dotted path, inside one layer, of the attention out-projection


FAMILIES: tuple[Family, ...] = (
    Family("llama-like", "Llama 2/3.x, Mistral, Mixtral, Qwen2/2.5/3, Qwen2-MoE/Qwen3-MoE, Gemma 1/2/3, "
           "Phi-3, DeepSeek, Granite, InternLM, StableLM", ("model.layers", "model.language_model.layers",
                                                          "language_model.model.layers"), "self_attn.o_proj"),
    Family("phi", "Phi-1/1.5/2", ("model.layers",), "self_attn.dense"),
    Family("gpt-neox", "GPT-NeoX, Pythia", ("gpt_neox.layers",), "attention.dense"),
    Family("falcon", "Falcon", ("transformer.h",), "self_attention.dense"),
    Family("gpt2", "GPT-2, StarCoder (GPTBigCode)", ("transformer.h",), "attn.c_proj"),
)


@dataclass
class DecoderLayout:
    family: str
    layers_path: str
    out_proj_path: str
    layers: list[nn.Module]
    out_projs: list[nn.Module]


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def find_layout(model: nn.Module, architecture: str, num_layers: int, width: int,
                input_width: Callable[[nn.Module], int | None]) -> DecoderLayout:
    """The first :data:`FAMILIES` entry that verifies on ``model``.

    ``input_width(module)`` is the engine's test of an out-projection: the (global) number of input
    features if ``module`` is a linear layer of the kind that engine expects, else None; ``width``
    (``num_heads * head_dim``) is what every out-projection must take."""
    tried: list[str] = []
    for fam in FAMILIES:
        for path in fam.layers:
            layers = _get(model, path)
            if not isinstance(layers, nn.ModuleList):
                continue
            where = f"{path}.N.{fam.out_proj}"
            if len(layers) != num_layers:
                tried.append(f"{where} ({len(layers)} layers, config says {num_layers})")
                continue
            projs = [_get(layer, fam.out_proj) for layer in layers]
            widths = {input_width(p) if isinstance(p, nn.Module) else None for p in projs}
            if widths != {width}:
                tried.append(f"{where} (input widths {sorted(map(str, widths))}, need {width})")
                continue
            return DecoderLayout(fam.name, path, fam.out_proj, list(layers), list(projs))
    looked = "; ".join(tried) if tried else ", ".join(f"{p}.N.{f.out_proj}" for f in FAMILIES for p in f.layers)
    raise SteeringUnsupported(architecture, f"no decoder layers with an attention out-projection found "
                                            f"(looked for {looked})")


def check_steering(vectors: Sequence[SteeringVector], num_layers: int, num_heads: int, head_dim: int,
                   hidden: int) -> None:
    """Raise :class:`InvalidSteering` for a vector the model cannot take (checked before any engine
    work, so a bad profile or request never reaches the forward pass)."""
    for i, v in enumerate(vectors):
        if not 0 <= v.layer < num_layers:
            raise InvalidSteering(f"steering vector {i}: layer {v.layer} outside [0, {num_layers})")
        n = v.vector.numel()
        if v.head is None:
            if n != hidden:
                raise InvalidSteering(f"steering vector {i}: residual vector has {n} entries, the model's "
                                      f"hidden size is {hidden}")
        elif not 0 <= v.head < num_heads:
            raise InvalidSteering(f"steering vector {i}: head {v.head} outside [0, {num_heads})")
        elif n != head_dim:
            raise InvalidSteering(f"steering vector {i}: head vector has {n} entries, head_dim is {head_dim}")
