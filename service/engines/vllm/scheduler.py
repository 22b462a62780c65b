"""vLLM scheduler that keeps Linear-Alignment pairs in lock-step (see ``pairing``).

It subclasses vLLM's synchronous ``Scheduler`` and changes one thing: before the step's output is
applied, a paired request's sampled token is discarded unless its partner sampled the same token
in the same step, and the request's computed-token count is rolled back by one so it recomputes
that position next step (the same rollback vLLM applies to rejected speculative tokens; the model
runner trims its cached output to the scheduler's count). After the output is applied, every
live pair is checked: same number of output tokens, same last token.

Async scheduling is not used with this scheduler: there the runner feeds a sampled token into
the next step on the device before the scheduler sees it, so a veto would have to cancel a step
already in flight.
"""

from __future__ import annotations

import logging
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler

from .pairing import PairBook, pair_tag, vetoes

log = logging.getLogger("alignserve.vllm.pairs")


class PairLockstepError(AssertionError):
    pass


class PairedScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pairs = PairBook()
        extra = self.vllm_config.additional_config
        self.strict_pairs = bool(extra.get("alignserve_strict_pairs", False)) if isinstance(extra, dict) else False
        self.pair_checks = 0

    def add_request(self, request: Any) -> None:
        params = request.sampling_params
        tag = pair_tag(params.extra_args) if params is not None else None
        if tag is not None:
            self.pairs.add(request.request_id, *tag)
        super().add_request(request)

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        sampled = model_runner_output.sampled_token_ids
        index = model_runner_output.req_id_to_index
        if self.pairs.pair_of and sampled:
            mine = {rid: list(sampled[index[rid]]) for rid in scheduler_output.num_scheduled_tokens
                    if rid in self.pairs.pair_of and rid in index}
            for rid in vetoes(self.pairs, mine):
                sampled[index[rid]] = []
                req = self.requests.get(rid)
                if req is not None and not req.is_finished():
                    req.num_computed_tokens -= 1
                self.pairs.vetoes += 1
        out = super().update_from_output(scheduler_output, model_runner_output)
        if self.pairs.pair_of:
            self._check_pairs(scheduler_output)
        return out

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
                msg = f"LA pair {pair} out of lock-step: {len(out_a)} vs {len(out_b)} tokens"
                if self.strict_pairs:
                    raise PairLockstepError(msg)
                log.error(msg)

    def _free_request(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.pairs.drop(request.request_id)
        return super()._free_request(request, *args, **kwargs)

    def make_stats(self, *args: Any, **kwargs: Any) -> Any:
        stats = super().make_stats(*args, **kwargs)
        if stats is not None and self.current_step % 2000 == 0 and self.pairs.vetoes:
            log.info("LA pairs: %d vetoed tokens, %d lock-step checks", self.pairs.vetoes, self.pair_checks)
        return stats
