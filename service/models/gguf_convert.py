"""Convert a GGUF checkpoint into a Hugging Face folder (safetensors + tokenizer + chat template).

transformers can *load* GGUF files but keeps them packed and refuses ``save_pretrained``; both of
our engines want one plain HF folder, so we de-quantize every tensor ourselves with the ``gguf``
package and map llama.cpp tensor names back to transformers names.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

Progress = Callable[[str], None]

# llama.cpp permutes Q/K rows only for these architectures; qwen2 is stored as-is.
_PERMUTED_ARCHES = {"llama", "mistral"}


def _gguf_to_hf_names(model: torch.nn.Module, arch_name: str, num_layers: int) -> dict[str, str]:
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch_name), None)
    if arch is None:
        raise ValueError(f"gguf does not know architecture {arch_name!r}")
    name_map = get_tensor_name_map(arch, num_layers)
    mapping: dict[str, str] = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        gguf_base = name_map.get_name(base)
        if gguf_base is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        mapping[f"{gguf_base}.{suffix}"] = hf_name
    return mapping


def convert_gguf_to_hf(
    gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.bfloat16, progress: Progress = print,
    extra_meta: dict[str, str] | None = None,
) -> None:
    """Write ``out_dir`` as a complete HF model folder. ``out_dir`` must not exist yet."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    progress("[convert] reading GGUF metadata")
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    arch = config.model_type
    if arch in _PERMUTED_ARCHES:
        raise ValueError(f"architecture {arch} needs Q/K un-permutation, which is not implemented")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    reader = GGUFReader(str(gguf_path))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    mapping = _gguf_to_hf_names(skeleton, arch, config.num_hidden_layers)
    expected = dict(skeleton.state_dict())

    tensors: dict[str, torch.Tensor] = {}
    total = len(reader.tensors)
    for i, t in enumerate(reader.tensors, 1):
        hf_name = mapping.get(t.name)
        if hf_name is None:
            raise ValueError(f"GGUF tensor {t.name} has no transformers counterpart")
        array = dequantize(t.data, t.tensor_type)
        tensor = torch.from_numpy(array.copy()).to(dtype)
        want = tuple(expected[hf_name].shape)
        if tuple(tensor.shape) != want:
            tensor = tensor.reshape(want)
        tensors[hf_name] = tensor.contiguous()
        if i % 25 == 0 or i == total:
            progress(f"[convert] de-quantized {i}/{total} tensors")
    missing = set(expected) - set(tensors)
    if config.tie_word_embeddings:
        missing.discard("lm_head.weight")
    if missing:
        raise ValueError(f"GGUF lacks tensors: {sorted(missing)[:5]}")

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.dtype = dtype  # recorded for readers; engines choose their own compute dtype
    config.architectures = [type(skeleton).__name__]
    config.save_pretrained(tmp)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(tmp)
    eos = [i for i in {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id} if i is not None]
    GenerationConfig(eos_token_id=sorted(eos), bos_token_id=tokenizer.bos_token_id).save_pretrained(tmp)
    (tmp / "alignserve-source.json").write_text(
        json.dumps({"gguf": gguf_path.name, "dtype": str(dtype).removeprefix("torch."), **(extra_meta or {})},
                   indent=2)
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    progress(f"[convert] wrote {out_dir}")
