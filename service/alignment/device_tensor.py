"""Small host lists onto the device without waiting for it.

``torch.tensor(values, device="cuda")`` copies from pageable memory, and a blocking host-to-device
copy synchronises the stream: the host waits until every kernel already queued has finished. Inside
vLLM's step (a logits processor, the runner's input preparation) that wait is for the forward pass
in flight, and it ends async scheduling's overlap of the next step's host work with this step's
GPU work — the 2026-12-07 H100 7B run priced it at ~1.8 ms per LA step. On CUDA the values go
through pinned memory and a non-blocking copy instead (torch's caching host allocator keeps the
pinned block alive until the copy has run); elsewhere this is ``torch.tensor``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def device_tensor(values: Sequence[float] | Sequence[int] | Sequence[bool], dtype: torch.dtype,
                  device: torch.device | str) -> torch.Tensor:
    dev = torch.device(device)
    if dev.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=dev)
    if not len(values):
        return torch.empty(0, dtype=dtype, device=dev)  # nothing to copy
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(dev, non_blocking=True)


def to_device(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host tensor on ``device`` (converted to ``dtype`` on the host first), same rule as above."""
    dev = torch.device(device)
    t = t if dtype is None else t.to(dtype)
    if dev.type != "cuda" or t.device.type != "cpu":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)
