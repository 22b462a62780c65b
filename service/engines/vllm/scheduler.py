"""vLLM schedulers that keep Linear-Alignment pairs in lock-step (the logic is ``pairing``).

``PairedScheduler`` subclasses vLLM's synchronous ``Scheduler``, ``AsyncPairedScheduler`` its
``AsyncScheduler``; both add the same three things around vLLM's own code:

* before ``schedule``: ``pairing.plan_step`` decides which running requests vLLM sees this step
  (a member that could only sample alone is held out; partners are put next to each other);
* after ``schedule``: ``pairing.lone_steps`` names the paired requests the step samples without
  their partner (vLLM preempted one, the budget or KV cache ran out, prefills of different length);
* in ``update_from_output``: those requests' tokens are discarded and their computed-token count
  (and, under async scheduling, their output placeholder) rolled back by one; they sit out the
  next ``schedule`` call, so the model runner drops them from its persistent batch and never feeds
  the discarded token into a later step (see ``pairing`` and DESIGN.md).

After every step, every live pair is checked: same number of output tokens, same last token.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from .pairing import PairBook, PairGate, Row, Veto, lone_steps, pair_tag, plan_step, sample_mismatches

log = logging.getLogger("alignserve.vllm.pairs")


class PairLockstepError(AssertionError):
    pass


class _Pairing:
    """Mixin over vLLM's ``Scheduler`` / ``AsyncScheduler`` (attributes below are vLLM's)."""

    requests: dict[str, Any]
    running: list[Any]
    max_num_running_reqs: int
    max_num_scheduled_tokens: int
    max_model_len: int
    waiting: Any
    scheduler_config: Any
    vllm_config: Any
    current_step: int

    def _init_pairs(self) -> None:
        self.pairs = PairBook()
        self.gate = PairGate()
        extra = self.vllm_config.additional_config
        self.strict_pairs = bool(extra.get("alignserve_strict_pairs", False)) if isinstance(extra, dict) else False
        self.pair_checks = 0
        self.pair_holds = 0
        self.pair_mismatches = 0
        self.pair_requeues = 0
        self._async = bool(self.scheduler_config.async_scheduling)
        kv = getattr(self, "kv_cache_config", None)
        tokens = kv.num_blocks * self.vllm_config.cache_config.block_size if kv is not None else None
        if tokens is not None and tokens < 2 * self.max_model_len:
            # an LA pair decodes only while both sequences hold their KV blocks at once
            log.warning("KV cache of %d tokens holds fewer than two max_model_len (%d) sequences: an LA pair "
                        "near that length cannot make progress", tokens, self.max_model_len)

    def add_request(self, request: Any) -> None:
        params = request.sampling_params
        tag = pair_tag(params.extra_args) if params is not None else None
        if tag is not None:
            self.pairs.add(request.request_id, *tag)
        super().add_request(request)  # type: ignore[misc]

    # ---- before and after vLLM's schedule --------------------------------------------------
    def _row(self, req: Any) -> Row:
        """What vLLM's running loop will ask for this request (same arithmetic, unlimited budget)."""
        placeholders = req.num_output_placeholders
        remaining = req.num_tokens_with_spec + placeholders - req.num_computed_tokens
        if placeholders > 0 and req.num_computed_tokens + 2 - placeholders >= req.num_prompt_tokens + req.max_tokens:
            return Row(req.request_id, 0, False)  # async: its last token is already in flight
        want = remaining
        threshold = self.scheduler_config.long_prefill_token_threshold
        if 0 < threshold < want:
            want = threshold
        want = max(0, min(want, self.max_model_len - req.num_computed_tokens - 1))
        return Row(req.request_id, want, want == remaining)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        if not self.pairs.pair_of:
            return super().schedule(*args, **kwargs)  # type: ignore[misc]
        plan = self._plan()
        if plan.stranded and self._requeue(self.gate.stranded(plan.stranded)):
            plan = self._plan()
        original = self.running
        by_id = {r.request_id: r for r in original}
        self.running = [by_id[rid] for rid in plan.order]
        cap = self.max_num_running_reqs
        self.max_num_running_reqs = cap - len(plan.held)  # held requests still occupy their slots
        try:
            out = super().schedule(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.max_num_running_reqs = cap
            self.running = self._restore(original, plan.held)
        self.pair_holds += len(plan.held)
        scheduled = out.num_scheduled_tokens
        self.gate.scheduled(scheduled)
        sampling = {rid: not self.requests[rid].is_prefill_chunk for rid in scheduled if rid in self.pairs.pair_of}
        lone = lone_steps(self.pairs, sampling)
        if lone:
            self.gate.vetoed(id(out), [Veto(rid, self.requests[rid].num_preemptions) for rid in lone])
        return out

    def _plan(self) -> Any:
        return plan_step(self.pairs, [self._row(r) for r in self.running], self.max_num_scheduled_tokens,
                         self.gate.forced())

    def _requeue(self, ids: set[str]) -> int:
        """Preempt stranded members (held, nothing in flight) and queue each right behind its waiting
        partner at the head of the waiting queue, so the two are admitted again together."""
        done = 0
        for rid in ids:
            req, mate = self.requests.get(rid), self.requests.get(self.pairs.partner(rid) or "")
            if req is None or mate is None or req not in self.running or req.num_output_placeholders:
                continue
            if mate.status not in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
                continue  # e.g. blocked on a grammar or a remote KV transfer: leave both alone
            self.running.remove(req)
            self._preempt_request(req, time.monotonic())  # type: ignore[attr-defined]  # now at the head
            self.waiting.remove_request(mate)  # type: ignore[attr-defined]
            self.waiting.prepend_request(mate)  # type: ignore[attr-defined]
            self.pair_requeues += 1
            done += 1
        return done

    def _restore(self, original: list[Any], held: set[str]) -> list[Any]:
        """vLLM's running list after the step in the original order: the held requests where they
        were, the ones vLLM preempted gone, the ones it admitted at the end."""
        now = {r.request_id for r in self.running}
        before = {r.request_id for r in original}
        kept = [r for r in original if r.request_id in now or r.request_id in held]
        return kept + [r for r in self.running if r.request_id not in before]

    # ---- when the step's output arrives ----------------------------------------------------
    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        sampled = model_runner_output.sampled_token_ids
        index = model_runner_output.req_id_to_index
        vetoes = self.gate.resolve(id(scheduler_output))
        if self.pairs.pair_of and sampled and not self._async:
            # Synchronous only: nothing has consumed this step's tokens yet, so a pair whose two rows
            # disagree can still be discarded. Under async scheduling the tokens are already fed to
            # the next step; a disagreement there is an invariant violation (reported below).
            mine = {rid: list(sampled[index[rid]]) for rid in scheduler_output.num_scheduled_tokens
                    if rid in self.pairs.pair_of and rid in index}
            vetoed = {v.req_id for v in vetoes}
            extra = [Veto(rid, self.requests[rid].num_preemptions)
                     for rid in sample_mismatches(self.pairs, mine) - vetoed if rid in self.requests]
            if extra:
                self.pair_mismatches += len(extra)
                self.gate.vetoed(-1, extra)  # out of the next schedule call too
                vetoes = vetoes + self.gate.resolve(-1)
        for v in vetoes:
            self._discard(v, sampled, index)
        if self.pairs.pair_of and sampled and self._async:
            mine = {rid: list(sampled[index[rid]]) for rid in scheduler_output.num_scheduled_tokens
                    if rid in self.pairs.pair_of and rid in index}
            bad = sample_mismatches(self.pairs, mine)
            if bad:
                self.pair_mismatches += len(bad)
                self._report(f"LA pair rows sampled different tokens under async scheduling: {sorted(bad)}")
        out = super().update_from_output(scheduler_output, model_runner_output)  # type: ignore[misc]
        if self.pairs.pair_of:
            self._check_pairs(scheduler_output)
        return out

    def _discard(self, v: Veto, sampled: list[list[int]], index: dict[str, int]) -> None:
        """Forget the token a step sampled for ``v.req_id`` alone, and make it recompute that position."""
        i = index.get(v.req_id)
        if sampled and i is not None:
            sampled[i] = []
        req = self.requests.get(v.req_id)
        if req is None or req.is_finished():
            return
        if req.num_preemptions == v.preemptions and req.num_computed_tokens > 0:
            req.num_computed_tokens -= 1  # a preempted request already restarts from zero
        if self._async and req.num_output_placeholders > 0:
            req.num_output_placeholders -= 1  # the token this step was expected to add
        self.pairs.vetoes += 1

    def _report(self, msg: str) -> None:
        if self.strict_pairs:
            raise PairLockstepError(msg)
        log.error(msg)

    def _check_pairs(self, scheduler_output: Any) -> None:
        seen: set[str] = set()
        for rid in scheduler_output.num_scheduled_tokens:
            pair = self.pairs.pair_of.get(rid)
            if pair is None or pair in seen:
                continue
            seen.add(pair)
            roles = self.pairs.members.get(pair, {})
            reqs = [self.requests.get(r) for r in roles.values()]
            if len(reqs) != 2 or any(r is None for r in reqs):
                continue
            a, b = reqs
            out_a, out_b = a.output_token_ids, b.output_token_ids  # type: ignore[union-attr]
            self.pair_checks += 1
            if len(out_a) != len(out_b) or (out_a and out_a[-1] != out_b[-1]):
                self._report(f"LA pair {pair} out of lock-step: {len(out_a)} vs {len(out_b)} tokens")

    def _free_request(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.pairs.drop(request.request_id)
        self.gate.drop(request.request_id)
        return super()._free_request(request, *args, **kwargs)  # type: ignore[misc]

    def make_stats(self, *args: Any, **kwargs: Any) -> Any:
        stats = super().make_stats(*args, **kwargs)  # type: ignore[misc]
        if stats is not None and self.current_step % 2000 == 0 and (self.pairs.vetoes or self.pair_holds):
            log.info("LA pairs: %d discarded lone tokens, %d held steps, %d lock-step checks",
                     self.pairs.vetoes, self.pair_holds, self.pair_checks)
        return stats


class PairedScheduler(_Pairing, Scheduler):
    """Synchronous scheduling (``async_scheduling=False``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_pairs()


class AsyncPairedScheduler(_Pairing, AsyncScheduler):
    """Async scheduling: the next step is scheduled while this one runs (``VLLMSettings.pair_async``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_pairs()
