"""Steering inside the compiled model: slot tables and per-token slot indices (pure; no vLLM).

CUDA graphs replay fixed kernels on fixed buffers, so steering cannot be a Python hook. Instead
the wrapped modules (``steering.py``) read, for each token of the flattened batch, a *slot* index
from a persistent buffer and apply that slot's rows of three per-layer tables:

* ``head_keep``/``head_shift`` ``[slots, width]`` on the attention out-projection's input (this
  rank's head columns, ``sharding.HeadShard``): ``x * keep + shift``. Identity is keep=1,
  shift=0; a replaced head has keep=0, shift=vector; an added head vector has keep=1,
  shift=vector — the same arithmetic as the transformers engine's pre-hook on ``o_proj``.
* ``resid_add`` ``[slots, hidden]`` on the decoder layer's output (the residual stream after the
  layer). That output is replicated on every rank (it follows the layer's all-reduces), so each
  rank adds it once to its copy: once per token.

Slot 0 is the identity, so unsteered tokens are unchanged bit for bit. A steered request owns up
to three slots, one per *phase* of a token's position ``p`` in a prompt of length ``P``:
``body`` (p < P-1: "all" vectors), ``last`` (p = P-1: every vector) and ``gen`` (p >= P:
"generated" and "all" vectors) — the same positions the transformers engine's hooks steer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...alignment.spec import SteeringVector
from .sharding import HeadShard

PHASES = ("body", "last", "gen")
_APPLIES = {"body": {"all"}, "last": {"all", "last_prompt", "generated"}, "gen": {"all", "generated"}}


def vectors_to_args(vectors: Sequence[SteeringVector]) -> list[dict[str, Any]]:
    """The form that crosses vLLM's process boundary in ``SamplingParams.extra_args`` (msgpack):
    each vector as little-endian float32 bytes, not a list of floats — 4 bytes a value on the wire,
    one memcpy to encode or decode, and nothing for vLLM's per-request deep copy of the params to
    walk (a 3,584 + 128 float list cost ~0.5 ms of the API process per stream to copy)."""
    return [
        {"layer": v.layer, "head": v.head, "position": v.position, "replace": v.replace,
         "scale": float(v.scale), "vector": v.vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()}
        for v in vectors
    ]


def _vector_bytes(value: Any) -> bytes:
    """float32 bytes of an args vector (bytes as sent, or a list of floats)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return np.asarray(value, dtype="<f4").tobytes()


def steering_key(items: Sequence[Mapping[str, Any]]) -> str:
    """Content key of a steering spec: equal specs share table slots. The vectors are hashed as
    their float32 bytes, not as JSON text (the H100 profile had the JSON key at 5.6 % of the API
    process's engine thread); a vector's length is part of the key."""
    import hashlib

    h = hashlib.sha1()
    for item in items:
        meta = sorted((k, v) for k, v in item.items() if k != "vector")
        h.update(repr(meta).encode())
        vec = _vector_bytes(item.get("vector", b""))
        h.update(len(vec).to_bytes(8, "little"))
        h.update(vec)
    return h.hexdigest()


def vectors_from_args(items: Sequence[Mapping[str, Any]]) -> list[SteeringVector]:
    return [
        SteeringVector(layer=int(d["layer"]),
                       vector=torch.from_numpy(np.frombuffer(_vector_bytes(d["vector"]), "<f4").copy()),
                       head=None if d.get("head") is None else int(d["head"]),
                       scale=float(d.get("scale", 1.0)), position=d.get("position", "generated"),
                       replace=bool(d.get("replace", False)))
        for d in items
    ]


@dataclass
class PhaseTables:
    """One slot's content for every layer (float32)."""

    resid_add: torch.Tensor  # [layers, hidden]
    head_keep: torch.Tensor  # [layers, width] this rank's out-projection input columns
    head_shift: torch.Tensor  # [layers, width]


def build_phase_tables(vectors: Sequence[SteeringVector], num_layers: int, hidden: int, shard: HeadShard,
                       device: torch.device | str = "cpu") -> dict[str, PhaseTables]:
    """Tables for each phase that has at least one vector, for the rank ``shard`` describes.

    Head vectors of heads another rank holds leave this rank's columns untouched. Where a head is
    both replaced and added to, the replacement wins (as in the transformers engine). Vectors are
    assumed valid (``decoder_layout.check_steering`` runs before a request reaches the worker)."""
    out: dict[str, PhaseTables] = {}
    d = shard.head_dim
    for phase in PHASES:
        chosen = [v for v in vectors if v.position in _APPLIES[phase]]
        if not chosen:
            continue
        resid = torch.zeros(num_layers, hidden, device=device)
        add = torch.zeros(num_layers, shard.width, device=device)
        keep = torch.ones(num_layers, shard.width, device=device)
        repl = torch.zeros(num_layers, shard.width, device=device)
        for v in chosen:
            vec = v.vector.to(device=device, dtype=torch.float32) * v.scale
            if v.head is None:
                resid[v.layer] += vec
                continue
            local = shard.local(v.head)
            if local is None:
                continue
            cols = slice(local * d, (local + 1) * d)
            if v.replace:
                keep[v.layer, cols] = 0.0
                repl[v.layer, cols] = vec
            else:
                add[v.layer, cols] += vec
        out[phase] = PhaseTables(resid_add=resid, head_keep=keep, head_shift=torch.where(keep == 0, repl, add))
    return out


class SlotAllocator:
    """Slots 1..n-1 of the tables; slot 0 is the identity and never handed out.

    Requests with identical steering (the common case: many requests of one profile) share
    slots under a content key, reference-counted, so the tables are written once per profile.
    A spec whose last request has finished stays *parked* in its slots: a later request with the
    same spec (the next request of that profile) finds its tables already written. Parked slots are
    taken back, least recently used first, only when a new spec needs room.
    """

    def __init__(self, num_slots: int) -> None:
        if num_slots < 2:
            raise ValueError("need at least one slot besides the identity slot")
        self._free = list(range(num_slots - 1, 0, -1))
        self.by_key: dict[str, dict[str, int]] = {}  # live specs (at least one user)
        self.users: dict[str, int] = {}
        self.owned: dict[str, str] = {}  # req id -> key
        self.parked: OrderedDict[str, dict[str, int]] = OrderedDict()  # no users, tables still in place
        self.writes = 0  # specs whose tables had to be written (tests, stats)

    @property
    def free(self) -> int:
        """Slots a new spec can take: never used, or parked."""
        return len(self._free) + sum(len(s) for s in self.parked.values())

    def lookup(self, req_id: str, key: str) -> dict[str, int] | None:
        """Slots for ``key`` if already filled, live or parked (the request becomes a user of them)."""
        if req_id in self.owned:
            return self.by_key[self.owned[req_id]]
        slots = self.by_key.get(key)
        if slots is None and key in self.parked:
            slots = self.by_key[key] = self.parked.pop(key)
            self.users[key] = 0
        if slots is not None:
            self.users[key] += 1
            self.owned[req_id] = key
        return slots

    def allocate(self, req_id: str, key: str, phases: Sequence[str]) -> dict[str, int]:
        """Slots for a spec not yet in the tables (the caller writes them)."""
        while len(phases) > len(self._free) and self.parked:
            _, slots = self.parked.popitem(last=False)
            self._free.extend(slots.values())
        if len(phases) > len(self._free):
            raise RuntimeError(f"no free steering slots for {req_id} ({len(self._free)} left)")
        slots = {p: self._free.pop() for p in phases}
        self.by_key[key] = slots
        self.users[key] = 1
        self.owned[req_id] = key
        self.writes += 1
        return slots

    def release(self, req_id: str) -> list[int]:
        """The request is gone; returns the slots its spec parked (its last user left)."""
        key = self.owned.pop(req_id, None)
        if key is None:
            return []
        self.users[key] -= 1
        if self.users[key] > 0:
            return []
        del self.users[key]
        slots = self.by_key.pop(key)
        self.parked[key] = slots
        return list(slots.values())


def cache_salt(args: Sequence[Mapping[str, Any]], key: str | None = None) -> str | None:
    """vLLM prefix-cache salt for a steered request, or None when its KV may be shared.

    vLLM keys cached KV blocks by token ids only. Steering at generated (or all) positions changes
    the KV of those tokens, so without a salt a later request whose prompt repeats them (the next
    turn of a chat, under another profile or none) would reuse steered KV. Requests with the same
    steering share one salt, so they still share prefixes among themselves. Steering only at the
    last prompt token (the Activation-RM readout) needs none: vLLM always recomputes a prompt's
    last block, and nothing else reads that token's KV.
    """
    if not args or all(a.get("position", "generated") == "last_prompt" for a in args):
        return None
    return f"alignserve-steer-{key or steering_key(args)}"


def token_slots(
    num_computed: Sequence[int] | np.ndarray,
    num_scheduled: Sequence[int] | np.ndarray,
    prompt_lens: Sequence[int] | np.ndarray,
    slots: Sequence[Mapping[str, int] | None],
) -> np.ndarray:
    """Slot index of every token of the flattened batch (requests in batch order).

    Request ``i`` contributes tokens at positions ``num_computed[i] .. num_computed[i] +
    num_scheduled[i] - 1``.
    """
    phases = np.array([(s.get("body", 0), s.get("last", 0), s.get("gen", 0)) if s else (0, 0, 0) for s in slots],
                      dtype=np.int64).reshape(-1, 3)
    return token_slots_of(num_computed, num_scheduled, prompt_lens, phases)


def token_slots_of(num_computed: Sequence[int] | np.ndarray, num_scheduled: Sequence[int] | np.ndarray,
                   prompt_lens: Sequence[int] | np.ndarray, phases: np.ndarray) -> np.ndarray:
    """``token_slots`` with each request's (body, last, gen) slots as a row of ``phases`` [n, 3]
    (0 = unsteered), without a Python pass over the tokens or the requests: the engine calls this
    every step (the H100 profile had the per-request loop at 8.6 % of the engine core's time)."""
    counts = np.asarray(num_scheduled, dtype=np.int64)
    n = len(counts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    owner = np.repeat(np.arange(n), counts)  # request of each token
    pos = np.arange(int(counts.sum()), dtype=np.int64) - starts[owner] + np.asarray(num_computed, np.int64)[owner]
    last = np.asarray(prompt_lens, dtype=np.int64)[owner] - 1
    p = phases[owner]
    return np.where(pos < last, p[:, 0], np.where(pos == last, p[:, 1], p[:, 2]))


@dataclass(frozen=True)
class SteeringSpec:
    """A request's steering in every form the engine needs, computed once per request: the
    JSON-safe vectors (``extra_args``), the content key (slot sharing and admission) and the
    prefix-cache salt."""

    args: list[dict[str, Any]]
    key: str
    salt: str | None

    @classmethod
    def of(cls, vectors: Sequence[SteeringVector]) -> SteeringSpec | None:
        if not vectors:
            return None
        args = vectors_to_args(vectors)
        key = steering_key(args)
        return cls(args, key, cache_salt(args, key))

