"""Does the glue's per-step host work wait for the GPU? (CUDA only; #18.)

Under vLLM's async scheduling the host prepares step n+1 while the GPU runs step n; one blocking
host<->device operation in a step (``.item()``, a copy from pageable memory) makes the host wait
for the step in flight and the overlap is lost. ``torch.cuda.set_sync_debug_mode("error")`` turns
every such operation into an exception. Checked here, on CUDA tensors shaped like a 7B batch:

* ``la_batch.PairedRows``: the batch changes (rows added, removed, moved: the per-pair tensors are
  rebuilt) and the LA step runs, greedy, sampled, seeded and adaptive rows mixed;
* ``RunnerSteering._install``: a new steering spec's tables written to their slots.

Usage (GPU host): python -m bench.sync_free --out bench/results   (``tests/test_sync_free.py`` runs
the same checks under pytest where CUDA is present.)
"""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path
from typing import Any

import torch

from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams, row_generator
from service.alignment.spec import SteeringVector
from service.engines.vllm.la_batch import PairedRow, PairedRows
from service.engines.vllm.runner_steering import RunnerSteering
from service.engines.vllm.sharding import HeadShard
from service.engines.vllm.steer_tables import steering_key, vectors_to_args
from service.engines.vllm.steering import SteeringBuffers


def _pairs(n: int, device: str) -> list[tuple[PairedRow, PairedRow]]:
    out = []
    for i in range(n):
        la = LinearAlignmentConfig("p", strength=3.0, adaptive=i % 3 == 0)
        sampling = SamplingParams() if i % 2 else SamplingParams(temperature=0.8, top_p=0.9, top_k=50,
                                                                 seed=i if i % 4 else None)
        gen = row_generator(sampling, device)
        out.append((PairedRow(f"p{i}", "plain", None, sampling), PairedRow(f"p{i}", "principle", la, sampling, gen)))
    return out


def check_paired_rows(device: str = "cuda", pairs: int = 64, vocab: int = 152064, steps: int = 6) -> dict[str, Any]:
    state = PairedRows(device)
    rows = _pairs(pairs + 2, device)
    state.update([], [(2 * i, a) for i, (a, _) in enumerate(rows[:pairs])] +
                 [(2 * i + 1, b) for i, (_, b) in enumerate(rows[:pairs])], [])
    g = torch.Generator(device=device).manual_seed(0)
    batch = 2 * pairs + 4
    for step in range(steps):
        logits = torch.randn(batch, vocab, device=device, generator=g) * 4
        if step == 2:  # a pair leaves, another joins, two rows swap: the tensors are rebuilt
            state.update([0, 1], [(0, rows[pairs][0]), (1, rows[pairs][1])], [(2, 3, True)])
        if step == 3:  # a member whose partner is not in the batch: vetoed
            state.update([], [(batch - 3, PairedRow("lonely", "plain", None, SamplingParams()))], [])
        if step == 4:
            state.update([], [(batch - 2, rows[pairs + 1][0]), (batch - 1, rows[pairs + 1][1])], [])
        state.apply(logits)
    return {"pairs": pairs, "vocab": vocab, "steps": steps, "rebuilds": state.builds}


def check_steering_install(device: str = "cuda", layers: int = 28, hidden: int = 3584, heads: int = 28,
                           head_dim: int = 128, slots: int = 193) -> dict[str, Any]:
    width = heads * head_dim
    bufs = SteeringBuffers(torch.zeros(8192, dtype=torch.long, device=device),
                           [torch.zeros(slots, hidden, dtype=torch.bfloat16, device=device) for _ in range(layers)],
                           [torch.ones(slots, width, dtype=torch.bfloat16, device=device) for _ in range(layers)],
                           [torch.zeros(slots, width, dtype=torch.bfloat16, device=device) for _ in range(layers)])
    steering = RunnerSteering(None, bufs, HeadShard(0, 1, heads, head_dim), hidden)
    g = torch.Generator().manual_seed(0)
    installed = 0
    for k in range(8):
        args = vectors_to_args([SteeringVector(layer=layers // 2, vector=torch.randn(hidden, generator=g)),
                                SteeringVector(layer=layers // 3, head=min(5, heads - 1),
                                               vector=torch.randn(head_dim, generator=g), position="all")])
        if steering._install(f"r{k}", args, steering_key(args)) is None:
            raise RuntimeError(f"spec {k} was not installed (see the log)")
        installed += 1
    return {"specs": installed, "layers": layers, "hidden": hidden}


CHECKS = {"paired_rows_rebuild_and_step": check_paired_rows, "steering_install": check_steering_install}


def run_checks(device: str = "cuda") -> dict[str, Any]:
    """Each check under ``set_sync_debug_mode("error")``: ok, or the first synchronising call."""
    results: dict[str, Any] = {}
    for name, fn in CHECKS.items():
        fn(device)  # warm-up: first-use allocations (the caching allocators) are not what is measured
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            results[name] = {"ok": True, **fn(device)}
        except RuntimeError as e:
            results[name] = {"ok": False, "error": str(e).splitlines()[0], "where": traceback.format_exc()[-1500:]}
        finally:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    args = ap.parse_args(argv)
    from bench.harness import Provenance, device_label, write_results

    res = run_checks()
    prov = Provenance.collect(device_label(None))
    md = ["# Sync-free glue steps (`torch.cuda.set_sync_debug_mode('error')`)\n", "| check | ok | detail |",
          "|---|---|---|"] + [f"| {k} | {v['ok']} | {v.get('error', '')} |" for k, v in res.items()]
    write_results(args.out, "sync_free", {"checks": res}, "\n".join(md) + "\n", prov)
    print("\n".join(md))
    return 0 if all(v["ok"] for v in res.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
