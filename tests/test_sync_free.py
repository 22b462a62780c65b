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


def test_steer_host_cost_measures_both_wire_forms(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bench.steer_host_cost import main

    assert main(["--hidden", "64", "--head-dim", "8", "--repeats", "5", "--out", str(tmp_path)]) == 0
    import json

    data = json.loads(next(tmp_path.glob("steer_host_cost_*.json")).read_text())
    now, before = data["rows"]
    assert now["form"].startswith("float32 bytes") and before["form"].startswith("list of floats")
    assert now["wire_bytes"] < before["wire_bytes"]  # 4 bytes a value against msgpack's 9 for a float
