"""The sort-free nucleus (``service/alignment/nucleus_threshold.py``): the threshold read from the top-k,
and the Triton bisection kernel for the rows the top-k does not cover — run here by Triton's CPU
interpreter (the GPU runs it compiled: ``bench/sync_free.py`` checks it against the sort there)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from service.alignment.nucleus_threshold import fast_threshold

ROOT = Path(__file__).resolve().parents[1]


def test_fast_threshold_hand_example() -> None:
    # probabilities 0.5, 0.3, 0.1, 0.05 (+ a tail of 0.05 not in the top-4)
    top = torch.tensor([[0.5, 0.3, 0.1, 0.05]] * 4)
    top_p = torch.tensor([[0.4], [0.8], [0.85], [0.96]])
    tau, covered = fast_threshold(top, top_p)
    # 0.4: only 0.5 (mass before 0.3 is 0.5); 0.8: 0.5, 0.3 (before 0.1 is 0.8, not < 0.8);
    # 0.85: also 0.1; 0.96: the top-4 holds 0.95 < 0.96 — not covered
    assert tau[:3].tolist() == pytest.approx([0.5, 0.3, 0.1])
    assert covered.tolist() == [True, True, True, False]


SCRIPT = textwrap.dedent("""
    import torch
    from service.alignment.sampling import nucleus_mask, SamplingParams, SamplingBatch, sampling_weights
    from service.alignment.linear_alignment import LinearAlignmentConfig, linear_alignment_step
    from tests.test_linear_alignment import _nucleus_float64, _near_boundary

    g = torch.Generator().manual_seed(11)
    scales = torch.tensor([0.01, 0.1, 0.5, 1, 2, 3, 5, 8, 20, 0.05, 1.5, 4])
    logits = torch.randn(len(scales), 3000, generator=g) * scales.unsqueeze(-1)
    logits[7, :3] += 30.0  # one row almost all in one token
    top_p = torch.tensor([0.8, 0.9, 0.5, 0.95, 0.8, 0.3, 0.99, 0.8, 0.6, 1.0, 0.7, 0.85])
    temperature = torch.tensor([0.5, 1.0, 0.7, 1.0, 0.5, 2.0, 1.0, 0.5, 1.0, 1.0, 0.3, 1.0])
    want = _nucleus_float64(logits, top_p, temperature)
    ok = ~_near_boundary(logits, top_p, temperature)
    assert bool(ok.all())
    for fast_k in (8, 32, 64):
        got = nucleus_mask(logits, top_p, temperature, fast_k=fast_k, sync_free=True)
        assert torch.equal(got, want), (fast_k, (got != want).sum(-1).tolist())
    # an LA step and a sampled row's weights: the same as the sort path of the host
    l_out = logits + torch.randn(logits.shape, generator=g)
    cfgs = [LinearAlignmentConfig("p", strength=2.0, plausibility_top_p=float(p)) for p in top_p]
    a = linear_alignment_step(logits, l_out, cfgs, sync_free=True).logits
    b = linear_alignment_step(logits, l_out, cfgs, sync_free=False).logits
    assert torch.equal(a, b)
    t, k = torch.full((12,), 0.8), torch.zeros(12, dtype=torch.long)
    wa = sampling_weights(logits, t, k, top_p, 0, True, sync_free=True)
    wb = sampling_weights(logits, t, k, top_p, 0, True, sync_free=False)
    assert torch.equal(wa, wb)
    print("THRESHOLD-PATH-OK")
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_threshold_kernel_interpreted_equals_float64_sort() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "ALIGNSERVE_NUCLEUS_TRITON": "force",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "THRESHOLD-PATH-OK" in out.stdout


def test_kernel_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.alignment.sampling import threshold_path

    probs = torch.softmax(torch.randn(2, 100), -1)
    assert not threshold_path(probs)  # CPU: the host path, unless forced
    monkeypatch.setenv("ALIGNSERVE_NUCLEUS_TRITON", "force")
    assert threshold_path(probs)
    monkeypatch.setenv("ALIGNSERVE_NUCLEUS_TRITON", "0")
    assert not threshold_path(probs)


def test_warm_up_is_a_no_op_off_cuda() -> None:
    from service.alignment.nucleus_threshold import warm_up

    assert warm_up("cpu") is False
