"""Host cost of one steered stream outside the model, as the engine sends it to vLLM (CPU).

Per steered vLLM stream the API process builds the spec (``SteeringSpec.of``: the wire form and the
content key) and vLLM's ``AsyncLLM.add_request`` deep-copies the ``SamplingParams`` unless
``skip_clone`` is set; the params cross to the engine core as msgpack. Measured for the wire form in
use (vectors as float32 bytes, no deep copy) and for the previous one (vectors as lists of floats, the
deep copy vLLM made), on the same spec: a residual vector of the 7B shape (3,584) and one head vector
(128). msgpack is msgspec's, the encoder vLLM uses.

Usage: python -m bench.steer_host_cost [--hidden 3584] [--head-dim 128] [--repeats 2000]
Writes bench/results/steer_host_cost_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.harness import Provenance, device_label, write_results
from service.alignment.spec import SteeringVector
from service.engines.vllm.steer_tables import SteeringSpec, steering_key, vectors_from_args

RESULTS = Path(__file__).resolve().parent / "results"


def _list_form(args: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The previous wire form: every vector a list of Python floats."""
    return [{**a, "vector": [float(x) for x in vectors_from_args([a])[0].vector.tolist()]} for a in args]


def _us(fn: Callable[[], object], repeats: int) -> float:
    """Median over 5 batches of the mean time per call, in microseconds."""
    per = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        per.append((time.perf_counter() - t) / repeats * 1e6)
    return statistics.median(per)


def measure(hidden: int, head_dim: int, repeats: int) -> dict[str, Any]:
    import msgspec

    g = torch.Generator().manual_seed(0)
    vectors = [SteeringVector(layer=12, vector=torch.randn(hidden, generator=g)),
               SteeringVector(layer=8, head=5, vector=torch.randn(head_dim, generator=g))]
    spec = SteeringSpec.of(vectors)
    assert spec is not None
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    forms = {"float32 bytes (now)": spec.args, "list of floats (before)": _list_form(spec.args)}
    rows = []
    for name, args in forms.items():
        extra = {"alignserve": {"steer": args, "steer_key": spec.key}}
        wire = enc.encode(extra)
        rows.append({
            "form": name, "wire_bytes": len(wire),
            "deep_copy_us": _us(lambda extra=extra: copy.deepcopy(extra), max(1, repeats // 10)),
            "encode_us": _us(lambda extra=extra: enc.encode(extra), repeats),
            "decode_us": _us(lambda wire=wire: dec.decode(wire), repeats),
            "key_us": _us(lambda args=args: steering_key(args), repeats),
            "worker_vectors_us": _us(lambda args=args: vectors_from_args(args), repeats),
        })
    build = _us(lambda: SteeringSpec.of(vectors), max(1, repeats // 10))
    return {"hidden": hidden, "head_dim": head_dim, "spec_build_us": build, "rows": rows}


def markdown(res: dict[str, Any], device: str) -> str:
    now, before = res["rows"]
    per_now = res["spec_build_us"] + now["encode_us"]  # skip_clone: no deep copy any more
    per_before = before["deep_copy_us"] + before["encode_us"]
    md = [f"# Host cost of a steered stream outside the model — {device}\n",
          f"Spec: a residual vector of {res['hidden']} and a head vector of {res['head_dim']} floats. "
          f"`SteeringSpec.of` (wire form + key, once per request): {res['spec_build_us']:.1f} µs now.\n",
          "| wire form | bytes | vLLM deep copy µs | msgpack encode µs | decode µs | key µs | worker decode µs |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['form']} | {r['wire_bytes']} | {r['deep_copy_us']:.1f} | {r['encode_us']:.1f} | "
           f"{r['decode_us']:.1f} | {r['key_us']:.1f} | {r['worker_vectors_us']:.1f} |" for r in res["rows"]]
    md.append(f"\nAPI process per steered stream, copy + encode: {per_before:.0f} µs before (the deep copy vLLM "
              f"made without `skip_clone`), {per_now:.0f} µs now including the spec build (`skip_clone=True`: "
              "no copy).")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=3584, help="residual vector length (default: 7B shape)")
    ap.add_argument("--head-dim", type=int, default=128, help="head vector length (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=2000, help="calls per timing batch (default %(default)s)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    res = measure(args.hidden, args.head_dim, args.repeats)
    prov = Provenance.collect(device_label("cpu"))
    md = markdown(res, prov.device)
    write_results(args.out, "steer_host_cost", res, md, prov)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
