"""Steering wrapped around vLLM-shaped modules, at tensor-parallel sizes 1, 2, 4 and 8 (no vLLM needed).

The ranks are simulated: one thread per rank, each with its shard of a decoder built the way vLLM
shards one (query heads split contiguously, KV heads split or replicated, out- and down-projections
row-parallel with an all-reduce of the partial sums). ``steering.attach`` wraps each rank's modules
exactly as ``AlignserveWorker`` does, ``RunnerSteering`` writes the slot index and the tables from
a request's ``extra_args``; the steered output of every rank must equal a one-rank float64
reference that steers the way the transformers engine's hooks do (head vectors on the
out-projection input, residual vectors on the layer output), and the ranks' captured heads,
gathered, must equal the reference's.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from service.alignment.spec import SteeringVector
from service.engines.decoder_layout import SteeringUnsupported, find_layout
from service.engines.vllm.capture import LastTokenInputs, causal_attention
from service.engines.vllm.pairing import EXTRA_KEY
from service.engines.vllm.runner_steering import RunnerSteering
from service.engines.vllm.sharding import HeadShard, gather_heads, head_owner, kv_head_of, kv_heads_per_rank
from service.engines.vllm.steer_tables import vectors_to_args
from service.engines.vllm.steering import SteeredLayer, SteeredOutProjection, attach

H, KVH, D, HIDDEN, FF, LAYERS, T = 8, 2, 4, 16, 24, 2, 6
DT = torch.float64


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("kv", [1, 2, 8])
def test_every_head_has_one_owner_and_reads_its_own_kv_head(tp: int, kv: int) -> None:
    seen: dict[int, tuple[int, int]] = {}
    for rank in range(tp):
        shard = HeadShard(rank, tp, H, D)
        for local in range(shard.local_heads):
            head = shard.first_head + local
            assert head_owner(head, H, tp) == (rank, local) and shard.local(head) == local
            seen[head] = (rank, local)
            # a local query head reads local KV head local // (local_heads / local_kv): that must be
            # the global KV head of its group
            local_kv = kv_heads_per_rank(kv, tp)
            assert kv_head_of(rank, local // (shard.local_heads // local_kv), kv, tp) == head // (H // kv)
        assert [shard.local(h) is not None for h in range(H)].count(True) == shard.local_heads
    assert sorted(seen) == list(range(H))
    with pytest.raises(ValueError):
        HeadShard(0, 3, H, D)


class World:
    """A tensor-parallel group simulated by threads: ``all_reduce`` sums every rank's tensor."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size)
        self.parts: list[torch.Tensor | None] = [None] * size

    def all_reduce(self, rank: int, x: torch.Tensor) -> torch.Tensor:
        self.parts[rank] = x
        self.barrier.wait()
        total = torch.stack([p for p in self.parts if p is not None]).sum(0)
        self.barrier.wait()
        return total

    def run(self, fn: Callable[[int], Any]) -> list[Any]:
        out: list[Any] = [None] * self.size
        errors: list[BaseException] = []

        def one(r: int) -> None:
            try:
                out[r] = fn(r)
            except BaseException as e:  # pragma: no cover - surfaced below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out


class FakeRowParallelLinear(nn.Module):
    """vLLM's ``RowParallelLinear`` contract: ``[out, in/tp]`` weight shard, local input columns,
    partial sums all-reduced, ``(output, bias)`` returned."""

    def __init__(self, full: torch.Tensor, rank: int, world: World) -> None:
        super().__init__()
        self.tp_rank, self.tp_size, self.world = rank, world.size, world
        self.input_size = full.shape[1]
        self.input_size_per_partition = full.shape[1] // world.size
        self.input_is_parallel, self.reduce_results = True, True
        per = self.input_size_per_partition
        self.weight = nn.Parameter(full[:, rank * per:(rank + 1) * per].clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = x @ self.weight.T
        if self.tp_size > 1:
            out = self.world.all_reduce(self.tp_rank, out)
        return out, None


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class FakeAttention(nn.Module):
    def __init__(self, w: dict[str, torch.Tensor], rank: int, world: World, kv: int) -> None:
        super().__init__()
        tp = world.size
        shard = HeadShard(rank, tp, H, D)
        q_rows = [h * D + i for h in range(shard.first_head, shard.first_head + shard.local_heads) for i in range(D)]
        kv_local = kv_heads_per_rank(kv, tp)
        kv_rows = [kv_head_of(rank, j, kv, tp) * D + i for j in range(kv_local) for i in range(D)]
        self.wq, self.wk, self.wv = w["q"][q_rows], w["k"][kv_rows], w["v"][kv_rows]
        self.heads, self.kv_heads = shard.local_heads, kv_local
        self.o_proj = FakeRowParallelLinear(w["o"], rank, world)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = causal_attention(x @ self.wq.T, x @ self.wk.T, x @ self.wv.T, self.heads, self.kv_heads, D, D ** -0.5)
        return self.o_proj(heads)[0]


class FakeLayer(nn.Module):
    """vLLM's decoder-layer convention: ``(positions, hidden, residual) -> (hidden, residual)``,
    the stream being ``hidden + residual``; a column-parallel up- and a row-parallel down-projection."""

    def __init__(self, w: dict[str, torch.Tensor], rank: int, world: World, kv: int) -> None:
        super().__init__()
        self.self_attn = FakeAttention(w, rank, world, kv)
        per = FF // world.size
        self.up = w["up"][rank * per:(rank + 1) * per]
        self.down = FakeRowParallelLinear(w["down"], rank, world)

    def forward(self, positions: torch.Tensor, h: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        residual = h if residual is None else h + residual
        a = self.self_attn(_norm(residual))
        residual = residual + a
        return self.down(torch.relu(_norm(residual) @ self.up.T))[0], residual


class FakeModel(nn.Module):
    def __init__(self, weights: list[dict[str, torch.Tensor]], rank: int, world: World, kv: int) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(FakeLayer(w, rank, world, kv) for w in weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, residual = x, None
        for layer in self.model.layers:
            h, residual = layer(torch.arange(x.shape[0]), h, residual)
        return h + residual


def _weights(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=DT) * 0.5

    return [{"q": r(H * D, HIDDEN), "k": r(KVH * D, HIDDEN), "v": r(KVH * D, HIDDEN), "o": r(HIDDEN, H * D),
             "up": r(FF, HIDDEN), "down": r(HIDDEN, FF)} for _ in range(LAYERS)]


def _reference(weights: list[dict[str, torch.Tensor]], x: torch.Tensor, vectors: list[SteeringVector],
               kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One rank, full weights, steering as the transformers hooks apply it; also the o_proj inputs
    at the last token (before this layer's head vectors)."""
    last = x.shape[0] - 1

    def where(v: SteeringVector) -> torch.Tensor:  # the prompt positions a vector applies to
        if v.position == "all":
            return torch.ones(x.shape[0], dtype=torch.bool)
        return torch.arange(x.shape[0]) == last  # last_prompt / generated: only the last prompt token here

    stream, caps = x, []
    for li, w in enumerate(weights):
        xn = _norm(stream)
        k, v = xn @ w["k"].T, xn @ w["v"].T
        heads = causal_attention(xn @ w["q"].T, k, v, H, kv, D, D ** -0.5)
        caps.append(heads[-1])
        for vec in vectors:
            if vec.layer == li and vec.head is not None:
                cols = slice(vec.head * D, (vec.head + 1) * D)
                m = where(vec)
                heads[m, cols] = vec.vector.to(DT) * vec.scale if vec.replace else heads[m, cols] + vec.vector.to(DT)
        stream = stream + heads @ w["o"].T
        stream = stream + torch.relu(_norm(stream) @ w["up"].T) @ w["down"].T
        for vec in vectors:
            if vec.layer == li and vec.head is None:
                stream = stream + where(vec)[:, None] * vec.vector.to(DT) * vec.scale
    return stream, torch.stack(caps)


def _runner(vectors: list[SteeringVector]) -> Any:
    extra = {EXTRA_KEY: {"steer": vectors_to_args(vectors)}} if vectors else None
    batch = types.SimpleNamespace(num_reqs=1, req_ids=["r"], num_computed_tokens_cpu=np.array([0]),
                                  num_prompt_tokens=np.array([T]))
    return types.SimpleNamespace(input_batch=batch, requests={
        "r": types.SimpleNamespace(sampling_params=types.SimpleNamespace(extra_args=extra))})


def _fake_width(m: nn.Module) -> int | None:
    return m.input_size if isinstance(m, FakeRowParallelLinear) else None


VECTORS = [
    SteeringVector(layer=0, head=5, vector=torch.linspace(-1, 1, D), position="all"),  # rank 2 of 4, 5 of 8
    SteeringVector(layer=1, head=2, vector=torch.full((D,), 0.7), replace=True, position="last_prompt"),
    SteeringVector(layer=1, head=6, vector=torch.ones(D), position="generated"),  # the last prompt token too
    SteeringVector(layer=0, vector=torch.linspace(0, 2, HIDDEN), position="all"),
    SteeringVector(layer=1, vector=torch.linspace(1, -1, HIDDEN), scale=2.0, position="last_prompt"),
]


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("kv", [KVH, H])
def test_simulated_ranks_steer_and_capture_like_one_rank(tp: int, kv: int) -> None:
    weights = _weights()
    for w in weights:
        w["k"], w["v"] = w["k"].repeat(kv // KVH, 1), w["v"].repeat(kv // KVH, 1)
    x = torch.randn(T, HIDDEN, generator=torch.Generator().manual_seed(1), dtype=DT)
    want, _ = _reference(weights, x, VECTORS, kv)
    plain, want_caps = _reference(weights, x, [], kv)
    assert not torch.allclose(want, plain)  # the vectors change the output
    world = World(tp)

    def rank_run(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = FakeModel(weights, rank, world, kv)
        layout = find_layout(model, "FakeForCausalLM", LAYERS, H * D, _fake_width)
        shard = HeadShard(rank, tp, H, D)
        bufs = attach(layout.layers, layout.out_projs, max_tokens=16, slots=4, hidden=HIDDEN, width=shard.width,
                      dtype=DT, device="cpu")
        steering = RunnerSteering(_runner(VECTORS), bufs, shard, HIDDEN)
        steering.before_step(np.array([T]))
        steered = model(x)
        with steering.identity(T), LastTokenInputs(layout.out_projs) as rec:
            model(x)
            caps = rec.take()
        return steered, caps, model(x)

    results = world.run(rank_run)
    for steered, _, again in results:  # replicated after the all-reduces: every rank has the stream
        torch.testing.assert_close(steered, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(again, want, rtol=1e-10, atol=1e-10)  # identity() restored the index
    torch.testing.assert_close(gather_heads([c for _, c, _ in results]), want_caps.float(), rtol=1e-6, atol=1e-6)


def test_unsteered_tokens_are_bit_identical_and_bad_tables_do_not_raise() -> None:
    world = World(1)
    weights = _weights()
    x = torch.randn(T, HIDDEN, generator=torch.Generator().manual_seed(2), dtype=DT)
    model = FakeModel(weights, 0, world, KVH)
    before = model(x)
    layout = find_layout(model, "FakeForCausalLM", LAYERS, H * D, _fake_width)
    shard = HeadShard(0, 1, H, D)
    bufs = attach(layout.layers, layout.out_projs, max_tokens=16, slots=4, hidden=HIDDEN, width=shard.width,
                  dtype=DT, device="cpu")
    assert isinstance(layout.layers[0], SteeredLayer) and isinstance(layout.out_projs[0], SteeredOutProjection)
    assert torch.equal(model(x), before)  # slot 0 is the identity
    bad = [SteeringVector(layer=LAYERS, vector=torch.ones(HIDDEN))]  # never passes the engine's check
    steering = RunnerSteering(_runner(bad), bufs, shard, HIDDEN)
    steering.before_step(np.array([T]))  # logged, runs unsteered; the worker must not die
    assert "r" in steering.failed and torch.equal(model(x), before)
    with pytest.raises(RuntimeError, match="already attached"):
        attach(layout.layers, layout.out_projs, max_tokens=16, slots=4, hidden=HIDDEN, width=shard.width,
               dtype=DT, device="cpu")


def test_wrapped_modules_compile_once_and_follow_the_buffers() -> None:
    """torch.compile traces the wrapped forwards without a graph break; writing the tables and the
    index in place afterwards changes the compiled model's output without recompiling (what CUDA
    graphs need: fixed kernels over persistent buffers)."""
    torch._dynamo.reset()
    world = World(1)
    model = FakeModel(_weights(), 0, world, KVH).float()
    for layer in model.model.layers:
        a = layer.self_attn
        a.wq, a.wk, a.wv, layer.up = a.wq.float(), a.wk.float(), a.wv.float(), layer.up.float()
    x = torch.randn(T, HIDDEN, generator=torch.Generator().manual_seed(3))
    layout = find_layout(model, "FakeForCausalLM", LAYERS, H * D, _fake_width)
    shard = HeadShard(0, 1, H, D)
    bufs = attach(layout.layers, layout.out_projs, max_tokens=16, slots=4, hidden=HIDDEN, width=shard.width,
                  dtype=torch.float32, device="cpu")
    eager_plain = model(x)
    compiles = []

    def backend(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]) -> Any:
        compiles.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x), eager_plain)
    RunnerSteering(_runner(VECTORS), bufs, shard, HIDDEN).before_step(np.array([T]))
    eager_steered = model(x)
    assert not torch.allclose(eager_steered, eager_plain)
    torch.testing.assert_close(compiled(x), eager_steered, rtol=1e-5, atol=1e-5)
    assert len(compiles) == 1


def test_layout_not_found_names_the_architecture() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    with pytest.raises(SteeringUnsupported, match="OddForCausalLM") as info:
        find_layout(Odd(), "OddForCausalLM", 2, 4, _fake_width)
    assert info.value.architecture == "OddForCausalLM"
    world = World(1)
    model = FakeModel(_weights(), 0, world, KVH)
    with pytest.raises(SteeringUnsupported, match="config says 3"):  # verified against the config
        find_layout(model, "FakeForCausalLM", LAYERS + 1, H * D, _fake_width)
    with pytest.raises(SteeringUnsupported, match="input widths"):
        find_layout(model, "FakeForCausalLM", LAYERS, H * D + 1, _fake_width)


def test_runner_steering_over_steps_shares_caches_and_releases_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests join and leave the batch across steps: two with one spec share its slots, the key
    the engine sent is used (the worker does not hash the vectors again), a request's extra args
    are read once, and its slots are released when the runner drops it."""
    import service.engines.vllm.runner_steering as rs

    args = vectors_to_args([SteeringVector(layer=0, vector=torch.ones(HIDDEN), position="all")])
    reads: list[str] = []

    class Params:
        def __init__(self, rid: str, extra: Any) -> None:
            self.rid, self._extra = rid, extra

        @property
        def extra_args(self) -> Any:
            reads.append(self.rid)
            return self._extra

    steered = {EXTRA_KEY: {"steer": args, "steer_key": "spec-1"}}
    requests = {rid: types.SimpleNamespace(sampling_params=Params(rid, extra))
                for rid, extra in (("a", steered), ("b", steered), ("u", None))}
    batch = types.SimpleNamespace(num_reqs=3, req_ids=["a", "u", "b"], num_computed_tokens_cpu=np.array([0, 0, 0]),
                                  num_prompt_tokens=np.array([2, 2, 1]))
    runner = types.SimpleNamespace(input_batch=batch, requests=requests)
    world = World(1)
    model = FakeModel(_weights(), 0, world, KVH)
    layout = find_layout(model, "FakeForCausalLM", LAYERS, H * D, _fake_width)
    shard = HeadShard(0, 1, H, D)
    bufs = attach(layout.layers, layout.out_projs, max_tokens=16, slots=5, hidden=HIDDEN, width=shard.width,
                  dtype=DT, device="cpu")
    monkeypatch.setattr(rs, "steering_key", lambda _: pytest.fail("the worker hashed the vectors"))
    steering = RunnerSteering(runner, bufs, shard, HIDDEN)
    steering.before_step(np.array([2, 2, 1]))  # prefill: a's 2 tokens, u's 2, b's 1
    slot = steering.alloc.by_key["spec-1"]
    assert steering.alloc.users["spec-1"] == 2 and steering.alloc.free == 4 - len(slot)
    body, last, gen = slot.get("body", 0), slot.get("last", 0), slot.get("gen", 0)
    assert bufs.index[:5].tolist() == [body, last, 0, 0, last]
    batch.num_computed_tokens_cpu = np.array([2, 2, 1])
    steering.before_step(np.array([1, 1, 1]))  # decode
    assert bufs.index[:3].tolist() == [gen, 0, gen]
    assert sorted(reads) == ["a", "b", "u"]  # once per request, not once per step
    del requests["a"]  # finished: the runner forgets it, the batch shrinks
    batch.num_reqs, batch.req_ids = 2, ["b", "u"]
    batch.num_computed_tokens_cpu, batch.num_prompt_tokens = np.array([2, 3]), np.array([1, 2])
    steering.before_step(np.array([1, 1]))
    assert "a" not in steering.phases and steering.alloc.users["spec-1"] == 1
    assert bufs.index[:3].tolist() == [gen, 0, 0]  # the third entry was cleared: no stale slot
    del requests["b"]
    batch.num_reqs, batch.req_ids = 1, ["u"]
    batch.num_computed_tokens_cpu, batch.num_prompt_tokens = np.array([4]), np.array([2])
    steering.before_step(np.array([1]))
    assert steering.alloc.free == 4 and "spec-1" not in steering.alloc.by_key and "spec-1" in steering.alloc.parked
    assert bufs.index[:2].tolist() == [0, 0]
