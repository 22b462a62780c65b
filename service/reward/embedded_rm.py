"""The shipped English reward model: a Bradley-Terry head on the embedded model's last hidden state.

No English reward model or preference data set can be fetched where alignserve is built (no
model hub; nothing on PyPI), so the repository ships a small head trained by
``bench/train_reward_head.py`` (how, on what, and its held-out accuracy: the ``.json`` beside the
head). It is turned into an ordinary HF folder — the base model's weights (linked, not copied),
its tokenizer and chat template, ``Qwen2ForSequenceClassification`` with one label, and the head
as ``score.weight`` — so transformers and vLLM load it like any other reward model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

HEADS_DIR = Path(__file__).resolve().parent / "heads"
EMBEDDED_RM_PREFIX = "embedded"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "vocab.json", "merges.txt")


@dataclass(frozen=True)
class ShippedHead:
    name: str  # the RM's name on /score and in logs
    base_model: str  # the embedded model it reads ("embedded:<name>")
    file: str  # safetensors under heads/, one tensor "score.weight" [1, hidden]

    @property
    def path(self) -> Path:
        return HEADS_DIR / self.file

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")


SHIPPED_HEAD = ShippedHead(name="alignserve-bt-qwen2.5-coder-0.5b",
                           base_model="embedded:qwen2.5-coder-0.5b-instruct",
                           file="qwen2.5-coder-0.5b-instruct-bt.safetensors")


def save_head(weight: torch.Tensor, path: Path, meta: dict[str, object]) -> None:
    """Write a trained head (``[hidden]`` or ``[1, hidden]``) and its provenance next to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"score.weight": weight.reshape(1, -1).to(torch.float32).contiguous()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_rm_folder(base_dir: Path, head: Path, out_dir: Path) -> Path:
    """Assemble (idempotently) an HF sequence-classification folder from a causal-LM folder and a
    ``score.weight`` head. The base weights are symlinked; an index maps every tensor to its file."""
    marker = out_dir / "alignserve-rm.json"
    digest = _sha256(head)
    if marker.is_file() and json.loads(marker.read_text()).get("head_sha256") == digest:
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    config = json.loads((base_dir / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    if not arch.endswith("ForCausalLM"):
        raise ValueError(f"{base_dir} is a {arch or 'model without architectures'}, not a causal LM")
    config.update(architectures=[arch.replace("ForCausalLM", "ForSequenceClassification")], num_labels=1,
                  id2label={"0": "reward"}, label2id={"reward": 0})
    config.setdefault("pad_token_id", config.get("eos_token_id"))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
    weight_map: dict[str, str] = {}
    sources = sorted(base_dir.glob("*.safetensors"))
    total = len(sources) + 1
    for i, src in enumerate(sources, 1):  # sharded names: a plain model.safetensors would hide the index
        name = f"model-{i:05d}-of-{total:05d}.safetensors"
        os.symlink(src.resolve(), out_dir / name)
        with safe_open(str(src), framework="pt") as f:
            weight_map.update({k: name for k in f.keys() if not k.startswith("lm_head.")})  # noqa: SIM118
    head_name = f"model-{total:05d}-of-{total:05d}.safetensors"
    shutil.copyfile(head, out_dir / head_name)
    weight_map["score.weight"] = head_name
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    marker.write_text(json.dumps({"base": str(base_dir), "head": str(head), "head_sha256": digest}) + "\n")
    return out_dir
