"""The top-p nucleus as a per-row probability threshold, found without sorting the vocabulary.

The nucleus of a row keeps a token while the mass strictly before it (in descending order) is
below ``top_p``. If ``tau`` is the probability of the last token kept, the nucleus is exactly the
set ``p >= tau`` (every token tied with ``tau`` is kept, where a sort would keep those it happens to
order first), and ``tau`` is the *largest* value with ``mass(p >= tau) >= top_p``.

On an accelerator a full-vocabulary sort per row was most of a Linear Alignment step (one sort of
64 rows x 151,936 probabilities each step). Here:

1. the ``k`` most likely tokens per row (``topk``, no sort of the rest) give ``tau`` at once for
   every row whose top-k already holds ``top_p`` — nearly every row of a trained model's
   distribution, and every row of LA's sharpened plausibility distribution;
2. the other rows are found by a Triton kernel that bisects ``tau`` over the float32 bit pattern
   (probabilities are non-negative, so the bits order like the values), summing the row's mass
   above each candidate; a row the top-k covered returns at once. The decision which rows need it
   is taken on the device, so the step never waits for the GPU and costs ~nothing when every row
   is covered.

Pure torch + Triton; Triton is optional (``available()``), callers fall back to a full sort.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)
ENV = "ALIGNSERVE_NUCLEUS_TRITON"  # "0": never the kernel; "force": also on CPU (Triton's interpreter)
# float32 read per block and bisection step (at most 31 steps: the bits of [0, 1.0))
_BLOCK = 2048


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def nucleus_fallback(probs_ptr, stride, vocab, top_p_ptr, covered_ptr, kth_ptr, tau_ptr,
                         BLOCK: tl.constexpr):  # pragma: no cover - compiled by Triton
        row = tl.program_id(0)
        if tl.load(covered_ptr + row) == 0:
            target = tl.load(top_p_ptr + row)
            base = probs_ptr + row.to(tl.int64) * stride
            # Bisection bounds as float32 bits (a float's bits + 1 is the next float up), invariant
            # mass(p >= lo) >= top_p > mass(p >= hi). Above: an uncovered row's top-k holds less than
            # top_p, so no t above its k-th largest p keeps top_p. Below: the tokens under
            # t = (1 - top_p) / (2 V) hold less than V t, so t still keeps top_p (up to the row's
            # rounding, hence the margin; 0 when top_p is within it of 1).
            hi = tl.load(kth_ptr + row).to(tl.int32, bitcast=True) + 1
            floor = tl.where(target < 0.9999, (1.0 - target) / (2.0 * vocab), 0.0)
            lo = tl.minimum(floor.to(tl.int32, bitcast=True), hi - 1)
            while hi - lo > 1:
                mid = lo + (hi - lo) // 2
                t = mid.to(tl.float32, bitcast=True)
                acc = tl.zeros((BLOCK,), dtype=tl.float32)
                for off in range(0, vocab, BLOCK):
                    cols = off + tl.arange(0, BLOCK)
                    x = tl.load(base + cols, mask=cols < vocab, other=0.0)
                    acc += tl.where(x >= t, x, 0.0)
                if tl.sum(acc, axis=0) >= target:
                    lo = mid
                else:
                    hi = mid
            tl.store(tau_ptr + row, lo.to(tl.float32, bitcast=True))

    return nucleus_fallback


@functools.cache
def available() -> bool:
    """Triton importable (``ALIGNSERVE_NUCLEUS_TRITON=0`` keeps the sort; see ``sampling.threshold_path``)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def warm_up(device: torch.device | str) -> bool:
    """Compile the kernel for ``device`` before the first request needs it (a CUDA engine calls this
    at start). If it cannot run here, the process keeps the sort (``ALIGNSERVE_NUCLEUS_TRITON=0``)
    and the error is logged; returns whether the kernel is in use."""
    if torch.device(device).type != "cuda" or not available() or os.environ.get(ENV) == "0":
        return False
    try:
        probs = torch.softmax(torch.randn(2, 4096, device=device), dim=-1)
        nucleus_threshold(probs, torch.tensor([0.9, 0.5], device=device), 4)  # both rows uncovered
        torch.cuda.synchronize(device)
    except Exception:
        log.exception("nucleus threshold kernel unavailable on %s; the full sort is used instead", device)
        os.environ[ENV] = "0"
        return False
    return True


def fast_threshold(top: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From the top-k probabilities (descending) ``[B, k]`` and ``top_p`` ``[B, 1]``: the threshold
    of each row the top-k covers, and which rows it covers (``[B]`` each)."""
    cum = top.cumsum(-1)
    kept = ((cum - top) < top_p).sum(-1).clamp_min(1)  # tokens whose mass before is below top_p
    tau = top.gather(-1, (kept - 1).unsqueeze(-1)).squeeze(-1)
    covered = cum[:, -1] >= top_p.squeeze(-1)
    return tau, covered


def nucleus_threshold(probs: torch.Tensor, top_p: torch.Tensor, k: int) -> torch.Tensor:
    """``tau`` ``[B]`` with ``nucleus = probs >= tau`` (``probs`` float32 ``[B, V]`` on the kernel's
    device, ``top_p`` ``[B]``; ``top_p >= 1`` gives 0: every token). Needs ``available()``."""
    probs = probs.contiguous()
    p = top_p.float().unsqueeze(-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1).values
    tau, covered = fast_threshold(top, p)
    everything = p.squeeze(-1) >= 1.0
    covered = covered | everything
    kth, tau = top[:, -1].contiguous(), tau.contiguous()
    _kernel()[(probs.shape[0],)](probs, probs.stride(0), probs.shape[-1], top_p.float().contiguous(),
                                 covered, kth, tau, BLOCK=_BLOCK, num_warps=8)
    return tau.masked_fill_(everything, 0.0)
