"""The glue's per-step host work never waits for the GPU (``bench/sync_free.py``; CUDA only) and, on
CPU, the same code paths produce the values they did before the pinned-memory route."""

from __future__ import annotations

import pytest
import torch

from bench.sync_free import check_paired_rows, check_steering_install, run_checks
from service.alignment.device_tensor import device_tensor, to_device


def test_device_tensor_on_cpu_is_torch_tensor() -> None:
    t = device_tensor([1, 2, 3], torch.long, "cpu")
    assert t.dtype == torch.long and t.tolist() == [1, 2, 3]
    assert device_tensor([], torch.float32, "cpu").shape == (0,)
    f = to_device(torch.tensor([0.5, 1.5]), "cpu", torch.bfloat16)
    assert f.dtype == torch.bfloat16 and f.tolist() == [0.5, 1.5]


def test_checks_run_on_cpu() -> None:
    assert check_paired_rows("cpu", pairs=4, vocab=64)["rebuilds"] >= 3
    assert check_steering_install("cpu", layers=3, hidden=16, heads=4, head_dim=4, slots=31)["specs"] == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_glue_steps_do_not_synchronise_on_cuda() -> None:
    assert all(r["ok"] for r in run_checks("cuda").values())
