"""The vLLM engine: continuous batching with paired Linear-Alignment streams and in-graph steering.

How the pieces fit (details in ``vllm/DESIGN.md``): an LA request becomes two vLLM requests
tagged as a pair in ``SamplingParams.extra_args``; ``PairedLinearAlignment`` (a batch-level
logits processor) draws one token from the aligned distribution and forces it on both rows;
the paired scheduler commits a pair's token only from a step that sampled both rows. Steering
vectors travel in ``extra_args`` too and are applied inside the model's forward by the model's own
decoder layers and attention out-projections, wrapped at load time (``worker.AlignserveWorker``),
so CUDA graphs stay on — for any decoder family ``decoder_layout`` knows, at any TP size. vLLM
runs its engine core in a subprocess; this class drives ``AsyncLLM`` from a private event-loop
thread so the synchronous ``Engine`` API (used by the worker thread) and the async benchmark share
one code path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from ...alignment.spec import SteeringVector
from ..base import (
    EngineStats,
    GenerationRequest,
    GenerationResult,
    Message,
    PromptSize,
    RequestRejected,
    TokenEvent,
    readout_sequences,
)
from ..chat import ChatPrompts
from ..decoder_layout import SteeringUnsupported, check_steering
from ..labels import LabelTokens, first_of_two
from .capture import unpack
from .pairing import EXTRA_KEY
from .sharding import gather_heads
from .steer_tables import SteeringSpec

log = logging.getLogger(__name__)

GLUE = "service.engines.vllm"


@dataclass
class VLLMSettings:
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.85
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    num_gpu_blocks: int | None = None  # override (small values force preemption in tests)
    enforce_eager: bool = False
    steer_slots: int = 3 * 64 + 1
    strict_pairs: bool = False  # raise inside the engine if a pair ever leaves lock-step
    glue: bool = True  # False: stock vLLM (no pairing, no steering) — the benchmark baseline
    pairing: bool = True  # LA pairs (scheduler + logits processor); False: no LA, vLLM's async scheduling
    # LA pairs under vLLM's async scheduling (scheduler.AsyncPairedScheduler), the default since the
    # H100 proof (bench/results/vllm_pairs_*_h100.md); False: synchronous scheduling. See DESIGN.md.
    pair_async: bool = True
    async_scheduling: bool | None = None  # engines without pairing: None = vLLM's default (async)
    cudagraph_sizes: list[int] | None = None
    # vLLM requests a profile compile keeps in flight (0: no bound). The head-selection readout is
    # thousands of one-token requests; bounding them leaves the engine to the live traffic.
    compile_concurrency: int = 32
    dtype: str = "bfloat16"
    tensor_parallel_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def engine_args(model_path: str, s: VLLMSettings) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # custom logits processors need V1
    kw: dict[str, Any] = dict(model=model_path, tokenizer=model_path, dtype=s.dtype,
                              max_model_len=s.max_model_len, gpu_memory_utilization=s.gpu_memory_utilization,
                              max_num_seqs=s.max_num_seqs, enable_prefix_caching=True,
                              enforce_eager=s.enforce_eager, disable_log_stats=False,
                              tensor_parallel_size=s.tensor_parallel_size)
    if s.max_num_batched_tokens:
        kw["max_num_batched_tokens"] = s.max_num_batched_tokens
    if s.num_gpu_blocks:
        kw["num_gpu_blocks_override"] = s.num_gpu_blocks
    if s.cudagraph_sizes:
        kw["compilation_config"] = {"cudagraph_capture_sizes": s.cudagraph_sizes}
    if s.async_scheduling is not None:
        kw["async_scheduling"] = s.async_scheduling
    if s.glue:
        kw.update(worker_cls=f"{GLUE}.worker.AlignserveWorker",
                  additional_config={"alignserve_steer_slots": s.steer_slots,
                                     "alignserve_strict_pairs": s.strict_pairs})
        if s.pairing:
            sched = "AsyncPairedScheduler" if s.pair_async else "PairedScheduler"
            kw.update(logits_processors=[f"{GLUE}.logits:PairedLinearAlignment"],
                      scheduler_cls=f"{GLUE}.scheduler.{sched}", async_scheduling=s.pair_async)
    kw.update(s.extra)
    return AsyncEngineArgs(**kw)


def check_kv_budget(kv_tokens: int | None, block: int, prompt_lens: list[int], max_tokens: int) -> None:
    """Refuse a request whose streams can never be in the KV cache at once (``exceeds_kv_budget``,
    413). An LA pair decodes only while both of its sequences hold their blocks, so a pair larger
    than the whole cache would wait forever; vLLM itself only checks one sequence against
    max_model_len. Each sequence is rounded up to whole blocks, as vLLM allocates."""
    if kv_tokens is None:
        return
    need = sum(-(-(n + max_tokens) // block) * block for n in prompt_lens)
    if need > kv_tokens:
        what = "an LA request's two streams" if len(prompt_lens) > 1 else "this request"
        raise RequestRejected("exceeds_kv_budget",
                              f"{what} need up to {need} KV-cache tokens (prompts {prompt_lens}, max_tokens "
                              f"{max_tokens}); the engine's KV cache holds {kv_tokens}: lower max_tokens or "
                              "shorten the prompt")


class VLLMEngine:
    backend = "vllm"

    def __init__(self, model_path: str, settings: VLLMSettings | None = None,
                 default_system: str | None = None) -> None:
        self.settings = settings or VLLMSettings()
        self.model_name = model_path
        self.default_system = default_system
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.prompts = ChatPrompts(self.tokenizer, default_system)
        top = AutoConfig.from_pretrained(model_path)
        cfg = top.get_text_config()
        self.architecture = (getattr(top, "architectures", None) or [type(top).__name__])[0]
        self.num_layers = int(cfg.num_hidden_layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.hidden_size = int(cfg.hidden_size)
        self.max_model_len = self.settings.max_model_len
        self.label_tokens = LabelTokens(self.tokenizer)
        # distinct steering specs live at once: each needs up to 3 table slots in the model
        self.steer_capacity = max(1, (self.settings.steer_slots - 1) // 3)
        self._steer_users: dict[str, int] = {}
        self._steer_cond: asyncio.Condition | None = None
        self._stats = EngineStats(kv_cache_usage=0.0)
        self.cancel_poll_s = 0.05  # how soon a cancelled request (client gone) is aborted
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-loop", daemon=True)
        self._thread.start()
        self.llm: Any = self.call(self._start(model_path))
        # KV-cache tokens the engine core allocated (it reports its block count at start-up)
        cache = self.llm.vllm_config.cache_config
        self.kv_block = int(cache.block_size or 16)
        self.kv_tokens: int | None = int(cache.num_gpu_blocks) * self.kv_block if cache.num_gpu_blocks else None
        # one entry per rank: what AlignserveWorker attached at load time (or why it did not)
        self.steering_info: list[dict[str, Any]] = (
            list(self.call(self.llm.collective_rpc("alignserve_steering_info"))) if self.settings.glue else [])
        self.steerable = bool(self.steering_info) and all(i["supported"] for i in self.steering_info)
        if self.steerable:
            i0 = self.steering_info[0]
            self.num_layers, self.num_heads, self.head_dim = int(i0["layers"]), int(i0["heads"]), int(i0["head_dim"])
        log.info("vLLM steering: %s", "attached" if self.steerable else self._why_not_steerable())

    async def _start(self, model_path: str) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        from .stats_logger import EngineStatsLogger

        return AsyncLLM.from_engine_args(engine_args(model_path, self.settings),
                                         stat_loggers=[functools.partial(EngineStatsLogger, sink=self._stats)])

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    # ---- steering checks -------------------------------------------------------------------
    def _why_not_steerable(self) -> str:
        if not self.settings.glue:
            return "the engine was started without alignserve's glue (stock vLLM)"
        reasons = {str(i.get("reason")) for i in self.steering_info if not i.get("supported")}
        return "; ".join(sorted(reasons)) or "no steering information from the workers"

    def validate_steering(self, vectors: Sequence[SteeringVector]) -> None:
        """Raise ``SteeringUnsupported`` (no layout on this architecture) or ``InvalidSteering``
        (a layer/head outside the model) before anything reaches vLLM's workers."""
        if not vectors:
            return
        if not self.steerable:
            raise SteeringUnsupported(self.architecture, self._why_not_steerable())
        check_steering(vectors, self.num_layers, self.num_heads, self.head_dim, self.hidden_size)

    def check_head_capture(self) -> None:
        """Raise ``SteeringUnsupported`` where an Activation-RM compile cannot run on this model."""
        if not self.steerable:
            raise SteeringUnsupported(self.architecture, self._why_not_steerable())
        problems = {str(i["capture"]) for i in self.steering_info if i.get("capture")}
        if problems:
            raise SteeringUnsupported(self.architecture, "head capture: " + "; ".join(sorted(problems)))

    # ---- prompts -------------------------------------------------------------------------
    def encode_chat(self, messages: list[Message]) -> list[int]:
        return self.prompts.encode_chat(messages)

    def prompt_size(self, messages: list[Message], principle: str | None, placement: str = "system") -> PromptSize:
        return self.prompts.size(messages, principle, placement)

    # ---- generation ----------------------------------------------------------------------
    def _params(self, req: GenerationRequest, max_tokens: int, tag: dict[str, Any] | None,
                spec: SteeringSpec | None) -> Any:
        """vLLM sampling params of one stream. The shown stream (plain request, or an LA pair's
        principle stream) returns only what is new each step (``DELTA``: no re-sent prefixes). An LA
        pair's plain stream is never shown: no detokenisation, no stop-string checks, no per-step
        output (``FINAL_ONLY``); it ends when the shown stream does (aborted) or at max_tokens."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sp = req.sampling
        extra: dict[str, Any] = {}
        if tag is not None or spec is not None:
            extra[EXTRA_KEY] = dict(tag or {})
            if spec is not None:
                extra[EXTRA_KEY]["steer"] = spec.args
                extra[EXTRA_KEY]["steer_key"] = spec.key  # the worker need not hash the vectors again
        paired = tag is not None
        hidden = paired and tag is not None and tag.get("role") == "plain"
        return SamplingParams(
            max_tokens=max_tokens, temperature=0.0 if paired or sp.greedy else sp.temperature,
            top_p=1.0 if paired else sp.top_p, top_k=0 if paired or sp.top_k <= 0 else sp.top_k,
            seed=None if paired else sp.seed, stop=None if hidden else (list(sp.stop) or None),
            ignore_eos=sp.ignore_eos, detokenize=not hidden,
            output_kind=RequestOutputKind.FINAL_ONLY if hidden else RequestOutputKind.DELTA,
            extra_args=extra or None, skip_clone=True)  # built for this one stream: vLLM need not deep-copy it

    async def agenerate(self, req: GenerationRequest) -> GenerationResult:
        """One request (two vLLM sequences for LA) from submission to its last token."""
        self.validate_steering(req.alignment.steering)
        spec = SteeringSpec.of(req.alignment.steering)  # once per request: args, key and salt
        async with self._steering_admitted(spec):
            return await self._agenerate(req, spec)

    @contextlib.asynccontextmanager
    async def _steering_admitted(self, spec: SteeringSpec | None) -> AsyncIterator[None]:
        """Wait while ``steer_capacity`` other distinct steering specs are in flight.

        Requests sharing a spec share the model's table slots; a spec beyond the capacity would
        find no free slot inside the worker, so it waits here instead (generation and scoring)."""
        if spec is None:
            yield
            return
        key = spec.key
        if self._steer_cond is None:
            self._steer_cond = asyncio.Condition()
        async with self._steer_cond:
            await self._steer_cond.wait_for(
                lambda: key in self._steer_users or len(self._steer_users) < self.steer_capacity)
            self._steer_users[key] = self._steer_users.get(key, 0) + 1
        try:
            yield
        finally:
            async with self._steer_cond:
                self._steer_users[key] -= 1
                if not self._steer_users[key]:
                    del self._steer_users[key]
                self._steer_cond.notify_all()

    @staticmethod
    def _prompt(token_ids: list[int], spec: SteeringSpec | None) -> Any:
        """The vLLM prompt; steered KV is kept apart in the prefix cache (``steer_tables.cache_salt``)."""
        from vllm.inputs import TokensPrompt

        salt = spec.salt if spec is not None else None
        return (TokensPrompt(prompt_token_ids=token_ids) if salt is None
                else TokensPrompt(prompt_token_ids=token_ids, cache_salt=salt))

    async def _agenerate(self, req: GenerationRequest, spec: SteeringSpec | None) -> GenerationResult:
        started = time.perf_counter()
        la = req.alignment.la
        if la is not None and not (self.settings.glue and self.settings.pairing):
            raise RequestRejected("la_unsupported", "this vLLM engine was started without Linear-Alignment pairing")
        plain, principle = self.prompts.streams(req.messages, la.principle if la else None,
                                                la.placement if la else "system")
        longest = max(len(plain), len(principle or []))
        max_tokens = min(req.sampling.max_tokens, self.max_model_len - longest)
        if max_tokens < 1:
            raise RequestRejected("prompt_too_long",
                                  f"prompt of {longest} tokens leaves no room under max_model_len {self.max_model_len}")
        lens = [len(plain)] if la is None else [len(principle or []), len(plain)]
        check_kv_budget(self.kv_tokens, self.kv_block, lens, max_tokens)
        rid = f"{req.request_id}-{uuid.uuid4().hex[:8]}"
        streams: list[tuple[str, list[int], Any]] = []
        if la is None:
            streams.append((rid, plain, self._params(req, max_tokens, None, spec)))
        else:
            s = req.sampling
            la_args = {"principle": la.principle, "strength": la.strength, "adaptive": la.adaptive,
                       "kl_budget": la.kl_budget, "max_strength": la.max_strength,
                       "plausibility_top_p": la.plausibility_top_p,
                       "plausibility_temperature": la.plausibility_temperature, "placement": la.placement,
                       "sampling": la.sampling}
            sampling = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "seed": s.seed}
            base = {"pair": rid, "sampling": sampling}
            lead_tag = {**base, "role": "principle", "la": la_args}
            streams.append((f"{rid}-p", principle or [], self._params(req, max_tokens, lead_tag, spec)))
            streams.append((f"{rid}-b", plain, self._params(req, max_tokens, {**base, "role": "plain"}, spec)))
        state: dict[str, Any] = {"tokens": [], "text": "", "finish": None, "first": 0.0, "mate_tokens": None}

        async def consume(sid: str, prompt: list[int], params: Any, lead: bool) -> None:
            async for out in self.llm.generate(self._prompt(prompt, spec), params, sid):
                o = out.outputs[0]
                if not lead:  # FINAL_ONLY: the whole output, once, if it ends by itself
                    state["mate_tokens"] = list(o.token_ids)
                    continue
                new = list(o.token_ids)  # DELTA: only this step's tokens and text
                if new and not state["tokens"]:
                    state["first"] = time.perf_counter() - started
                delta = o.text
                state["tokens"].extend(new)
                state["text"] += delta
                if req.on_token is not None:
                    for j, tok in enumerate(new):
                        req.on_token(TokenEvent(req.request_id, tok, delta if j == len(new) - 1 else "",
                                                len(state["tokens"]) - len(new) + j))
                if o.finish_reason is not None:
                    state["finish"] = "stop" if o.finish_reason == "stop" else "length"
                if req.cancelled.is_set():
                    state["finish"] = "cancelled"
                    return

        tasks = [asyncio.ensure_future(consume(sid, p, sp, i == 0)) for i, (sid, p, sp) in enumerate(streams)]
        try:
            while not tasks[0].done():  # a request still queued inside vLLM yields no output to check
                await asyncio.wait([tasks[0]], timeout=self.cancel_poll_s)
                if req.cancelled.is_set() and not tasks[0].done():
                    state["finish"] = "cancelled"
                    tasks[0].cancel()  # AsyncLLM.generate aborts the request when cancelled
                    await asyncio.wait([tasks[0]])  # cancel() only asks: the task is not done yet
                    break
            if not tasks[0].cancelled():
                tasks[0].result()
        finally:
            for t in tasks[1:]:
                if not t.done():
                    await asyncio.sleep(0)  # let the mate see its final output of the same step
                    t.cancel()
            await self.llm.abort([sid for sid, _, _ in streams])
        mate = state["mate_tokens"]
        if la is not None and mate is not None and state["finish"] != "cancelled":
            n = min(len(mate), len(state["tokens"]))
            if mate[:n] != state["tokens"][:n]:
                raise RuntimeError(f"LA pair {rid} diverged")  # the scheduler guarantees this never happens
        strengths = [la.strength] * len(state["tokens"]) if la is not None and not la.adaptive else []
        return GenerationResult(
            request_id=req.request_id, text=state["text"], token_ids=list(state["tokens"]),
            finish_reason=state["finish"] or "length", prompt_tokens=len(plain),
            principle_prompt_tokens=len(principle) if principle is not None else None,
            completion_tokens=len(state["tokens"]), strengths=strengths,
            first_token_s=state["first"], total_s=time.perf_counter() - started)

    def submit(self, request: GenerationRequest) -> concurrent.futures.Future[GenerationResult]:
        """Hand one request to vLLM's continuous batching; the future settles when it is done."""
        return asyncio.run_coroutine_threadsafe(self.agenerate(request), self.loop)

    def stats(self) -> EngineStats:
        return dataclasses.replace(self._stats)

    def health_error(self) -> str | None:
        """Dead or alive without traffic (the worker probes it; ``scheduling/health.py``): vLLM sets
        ``errored`` as soon as its engine-core process is gone."""
        return "the vLLM engine core is dead" if self.llm.errored else None

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        async def all_of() -> list[GenerationResult]:
            return list(await asyncio.gather(*(self.agenerate(r) for r in requests)))

        return self.call(all_of())

    # ---- scoring -------------------------------------------------------------------------
    async def alabel_probability(self, conversations: Sequence[list[Message]], labels: tuple[str, str],
                                 steering: Sequence[SteeringVector] = ()) -> list[float]:
        ids = self.label_tokens.ids(labels)
        return await self._label_probabilities([self.encode_chat(c) for c in conversations], ids, steering)

    async def _label_probabilities(self, prompts: Sequence[list[int]], label_ids: tuple[int, int],
                                   steering: Sequence[SteeringVector] = (),
                                   limit: asyncio.Semaphore | None = None) -> list[float]:
        """P(first) / (P(first) + P(second)) of the next token after each prompt, for the two token
        ids ``label_ids``; one vLLM request each (at most ``limit`` of them in flight, when given)."""
        from vllm import SamplingParams

        self.validate_steering(steering)
        spec = SteeringSpec.of(steering)
        extra = {EXTRA_KEY: {"steer": spec.args, "steer_key": spec.key}} if spec is not None else None
        salted = self._prompt([], spec)  # the salt is computed once per spec, not per request

        async def one(i: int, prompt: list[int]) -> float:
            sp = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(label_ids),
                                extra_args=extra, skip_clone=True)
            final = None
            async with limit if limit is not None else contextlib.nullcontext():
                async for out in self.llm.generate({**salted, "prompt_token_ids": prompt}, sp,
                                                   f"label-{uuid.uuid4().hex[:8]}-{i}"):
                    final = out
            assert final is not None and final.outputs[0].logprobs
            lp = final.outputs[0].logprobs[0]
            return first_of_two(lp[label_ids[0]].logprob, lp[label_ids[1]].logprob)

        async with self._steering_admitted(spec):
            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    def label_probability(self, conversations: Sequence[list[Message]], labels: tuple[str, str],
                          steering: Sequence[SteeringVector] = ()) -> list[float]:
        return self.call(self.alabel_probability(conversations, labels, steering))

    # ---- Activation-RM compilation ---------------------------------------------------------
    def capture_head_activations(self, conversations: Sequence[list[Message]],
                                 completions: Sequence[str] | None = None) -> torch.Tensor:
        """``[n, layers, heads, head_dim]`` at each conversation's last token (after its completion,
        if given), read inside the worker by ``capture`` between engine steps."""
        self.check_head_capture()
        seqs = readout_sequences(self.encode_chat, self.tokenizer, conversations, completions)
        if any(len(s) > self.max_model_len for s in seqs):
            raise ValueError(f"a capture sequence is longer than max_model_len {self.max_model_len}")
        per_rank = self.call(self.llm.collective_rpc("alignserve_capture_heads", args=(seqs,)))
        parallel = bool(self.steering_info[0].get("parallel", True)) if self.steering_info else True
        acts = gather_heads([unpack(p) for p in per_rank], parallel)
        return acts.view(len(seqs), self.num_layers, self.num_heads, self.head_dim)

    def open_readout(self, conversations: Sequence[list[Message]]) -> _VLLMReadout:
        if not self.steerable:
            raise SteeringUnsupported(self.architecture, self._why_not_steerable())
        return _VLLMReadout(self, [self.encode_chat(c) for c in conversations])

    def close(self) -> None:
        try:
            self.llm.shutdown()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


class _VLLMReadout:
    """Two-label probabilities of a fixed set of conversations under many steering options (head-selection search).

    Each option is one vLLM request per conversation, all options at once but at most
    ``compile_concurrency`` requests in flight; the options steer only the last prompt token, so
    every request after the first finds its prefix in vLLM's prefix cache and computes only its
    last block."""

    def __init__(self, engine: VLLMEngine, prompts: list[list[int]]) -> None:
        if any(len(p) < 2 for p in prompts):
            raise ValueError("readout conversations need at least two tokens")
        self.engine, self.prompts, self.size = engine, prompts, len(prompts)

    def label_probability(self, options: Sequence[Sequence[SteeringVector]],
                          labels: tuple[str, str]) -> torch.Tensor:
        cap = self.engine.settings.compile_concurrency
        ids = self.engine.label_tokens.ids(labels)

        async def every_option() -> list[list[float]]:
            limit = asyncio.Semaphore(cap) if cap > 0 else None
            return list(await asyncio.gather(*(self.engine._label_probabilities(self.prompts, ids, o, limit)
                                               for o in options)))

        return torch.tensor(self.engine.call(every_option()), dtype=torch.float32).view(len(options), self.size)

    def close(self) -> None:
        pass
