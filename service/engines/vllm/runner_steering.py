"""Before each step: the per-token slot index and, on first sight of a spec, its tables (no vLLM import).

``AlignserveWorker`` wraps the model runner's ``_prepare_inputs`` — called every step once the
persistent batch has its final order — so that :meth:`RunnerSteering.before_step` writes the slot
of every scheduled token into the persistent index the wrapped modules read (the way vLLM's LoRA
support maps tokens to adapters). A steered request's vectors arrive in
``SamplingParams.extra_args``; its slots are filled on first sight and released when the runner
forgets the request. Requests with equal specs share slots.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ...alignment.device_tensor import to_device
from .pairing import EXTRA_KEY
from .sharding import HeadShard
from .steer_tables import (
    PhaseTables,
    SlotAllocator,
    build_phase_tables,
    steering_key,
    token_slots_of,
    vectors_from_args,
)
from .steering import SteeringBuffers

log = logging.getLogger("alignserve.vllm.steering")


class RunnerSteering:
    def __init__(self, runner: Any, bufs: SteeringBuffers, shard: HeadShard, hidden: int) -> None:
        self.runner = runner
        self.bufs = bufs
        self.shard = shard
        self.hidden = hidden
        self.alloc = SlotAllocator(bufs.slots)
        pin = bufs.index.device.type == "cuda"
        self.host = torch.zeros(bufs.index.shape[0], dtype=torch.long, pin_memory=pin)
        self.dirty = 0  # tokens written non-zero by the previous step
        self.failed: set[str] = set()  # requests whose tables could not be built (logged once, run unsteered)
        self.phases: dict[str, tuple[int, int, int]] = {}  # req id -> (body, last, gen) slots, while it runs

    def _install(self, req_id: str, args: list[dict[str, Any]], key: str | None = None) -> dict[str, int] | None:
        key = key or steering_key(args)  # the engine sends the key it computed once per spec
        shared = self.alloc.lookup(req_id, key)
        if shared is not None:
            return shared
        try:
            tables = build_phase_tables(vectors_from_args(args), len(self.bufs.resid), self.hidden, self.shard)
            slots = self.alloc.allocate(req_id, key, list(tables))
        except Exception:  # the engine validates and admits first; never take the engine down over one request
            log.exception("steering tables for %s could not be built; it runs unsteered", req_id)
            self.failed.add(req_id)
            return None
        self._write(tables, slots)
        return slots

    def _write(self, tables: dict[str, PhaseTables], slots: dict[str, int]) -> None:
        """Tables built on the host go to their slots with one non-blocking copy per table kind and
        one row scatter per layer: a blocking copy here would wait for the step in flight (ending
        async scheduling's overlap), and a copy per layer, slot and kind was ~250 launches."""
        phases = list(tables)
        dev, dtype = self.bufs.index.device, self.bufs.resid[0].dtype
        rows = to_device(torch.tensor([slots[p] for p in phases], dtype=torch.long), dev)
        kinds = ((self.bufs.resid, "resid_add"), (self.bufs.keep, "head_keep"), (self.bufs.shift, "head_shift"))
        for bufs, field in kinds:
            host = torch.stack([getattr(tables[p], field) for p in phases], dim=1)  # [layers, phases, width]
            values = to_device(host, dev, dtype)
            for li, buf in enumerate(bufs):
                buf.index_copy_(0, rows, values[li])

    def _phases_of(self, rid: str) -> tuple[int, int, int]:
        """(body, last, gen) slots of a request the runner holds; (0, 0, 0) when it is unsteered."""
        state = self.runner.requests[rid]
        extra = state.sampling_params.extra_args if state.sampling_params is not None else None
        ours = (extra or {}).get(EXTRA_KEY, {}) if extra else {}
        steer = ours.get("steer")
        slots = self._install(rid, steer, ours.get("steer_key")) if steer else None
        return (slots.get("body", 0), slots.get("last", 0), slots.get("gen", 0)) if slots else (0, 0, 0)

    def before_step(self, num_scheduled: np.ndarray) -> None:
        """Write this step's per-token slot index. A request's slots are looked up once, when it
        first appears (its steering never changes), and forgotten when the runner drops it."""
        batch = self.runner.input_batch
        n = batch.num_reqs
        requests = self.runner.requests
        for rid in [r for r in self.phases if r not in requests]:
            del self.phases[rid]
            self.alloc.release(rid)
            self.failed.discard(rid)
        rows = []
        for rid in batch.req_ids[:n]:
            row = self.phases.get(rid)
            if row is None:
                row = self.phases[rid] = self._phases_of(rid)
            rows.append(row)
        table = np.array(rows, dtype=np.int64).reshape(-1, 3)
        any_steered = bool(table.any())
        if not any_steered and not self.dirty:
            return
        total = int(num_scheduled[:n].sum())
        idx = token_slots_of(batch.num_computed_tokens_cpu[:n], num_scheduled[:n], batch.num_prompt_tokens[:n], table)
        width = max(total, self.dirty)
        self.host[:width] = 0
        self.host[:total] = torch.from_numpy(idx)
        # Asynchronous from pinned memory: a blocking copy would stall the CPU on the GPU every
        # step. Safe to reuse ``host`` next step: _prepare_inputs runs inside the runner's
        # synchronize_input_prep(), which waits for the previous step's input copies.
        self.bufs.index[:width].copy_(self.host[:width], non_blocking=True)
        self.dirty = total if any_steered else 0

    @contextlib.contextmanager
    def identity(self, tokens: int) -> Iterator[None]:
        """The first ``tokens`` index entries read slot 0 (unsteered) inside the block, then are
        restored (the head capture runs between steps on whatever the last step left there)."""
        saved = self.bufs.index[:tokens].clone()
        self.bufs.index[:tokens].zero_()
        try:
            yield
        finally:
            self.bufs.index[:tokens].copy_(saved)
