"""Which machine a result came from: a human label and the short tag in results file names."""

from __future__ import annotations

import platform
import re
from pathlib import Path

_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct"}


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` where there is none)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_label(device: object = None) -> str:
    """The GPU's name for a CUDA device, else ``cpu (<model>, <torch threads> threads)``.

    ``device`` is anything with a ``type`` (a ``torch.device``), a string such as "cuda:1", or
    None / "auto" for "the GPU if there is one".
    """
    import torch

    kind = getattr(device, "type", None) or (str(device) if device is not None else None)
    if kind in (None, "auto"):
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind.startswith("cuda"):
        _, _, index = str(device).partition(":")  # "cuda:1" (a torch.device prints the same way)
        return str(torch.cuda.get_device_name(int(index or 0)))
    return f"cpu ({cpu_model_name()}, {torch.get_num_threads()} threads)"


def device_tag(label: str) -> str:
    """Short lowercase tag: "cpu" for CPU labels, else the GPU's model ("h100", "a100", "rtx4090")."""
    if label.lower().startswith("cpu"):
        return "cpu"
    words = [w for w in re.split(r"[\s\-_(),]+", label.lower()) if w and w not in _VENDOR_WORDS]
    for i, word in enumerate(words):
        if any(c.isdigit() for c in word):
            prev = words[i - 1] if i and words[i - 1].isalpha() else ""
            return re.sub(r"[^a-z0-9]", "", prev + word)
    return re.sub(r"[^a-z0-9]", "", "".join(words)) or "unknown"
