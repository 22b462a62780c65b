"""The generation use case: plan a request, hand it to the engine worker, wait or stream, report.

Every API shape (``POST /generate``, the OpenAI-compatible ``/v1`` routes) parses its body into a
:class:`GenerateCommand` and calls :class:`Generations`; planning (profile, language principle,
prompt budget), admission (429), deadlines (504), cancellation when the client leaves, metrics and
the alignment/language report are therefore the same for all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..alignment.sampling import SamplingParams
from ..alignment.spec import AlignmentSpec
from ..engines.base import (
    Engine,
    GenerationRequest,
    GenerationResult,
    Message,
    RequestRejected,
    TokenEvent,
    raw_prompt,
)
from ..language.fidelity import LanguageReport
from ..scheduling.worker import Overloaded as QueueFull
from ..scheduling.worker import WorkerStopped
from .bridge import LoopBridge, TokenFeed
from .errors import ClientGone, DomainError, InvalidInput, Overloaded, Timeout, TooLarge, Unavailable
from .planning import alignment_for
from .profile_spec import LASettings, ProfileSpec
from .profiles import ResolvedProfile

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 128


@dataclass(frozen=True)
class GenerateCommand:
    """What a caller asks for, independent of the wire format."""

    messages: list[Message]
    profile: str | ProfileSpec | None = None
    max_tokens: int | None = None  # None: min(DEFAULT_MAX_TOKENS, the server's limit)
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    steer_strength: float | None = None
    ignore_eos: bool = False
    la_overrides: Mapping[str, Any] = field(default_factory=dict)  # LASettings fields replacing the profile's
    route: str = "/generate"  # the metrics label of the API that asked


@dataclass(frozen=True)
class AlignmentApplied:
    method: str  # none | linear_alignment | activation_steering | linear_alignment+activation_steering
    profile: str | None
    principle: str | None = None
    strength_mode: str | None = None  # fixed | adaptive
    mean_strength: float | None = None
    steered_heads: int = 0
    steer_strength: float | None = None


@dataclass(frozen=True)
class Outcome:
    """A finished generation as every API reports it."""

    id: str
    model: str
    text: str
    finish_reason: str
    prompt_tokens: int
    principle_prompt_tokens: int | None
    completion_tokens: int
    queue_s: float
    first_token_s: float
    total_s: float
    tokens_per_s: float
    alignment: AlignmentApplied
    language: LanguageReport


def alignment_method(alignment: AlignmentSpec) -> str:
    parts = [m for m, on in (("linear_alignment", alignment.la is not None),
                             ("activation_steering", bool(alignment.steering))) if on]
    return "+".join(parts) or "none"


def alignment_applied(profile: ResolvedProfile, alignment: AlignmentSpec,
                      result: GenerationResult | None) -> AlignmentApplied:
    la = alignment.la
    heads = len(alignment.steering)
    steer = alignment.steering[0].scale if heads else None
    method = alignment_method(alignment)
    if la is None:
        return AlignmentApplied(method, profile.label, steered_heads=heads, steer_strength=steer)
    return AlignmentApplied(method, profile.label, principle=la.principle,
                            strength_mode="adaptive" if la.adaptive else "fixed",
                            mean_strength=result.mean_strength if result else None,
                            steered_heads=heads, steer_strength=steer)


def with_la_overrides(profile: ResolvedProfile, overrides: Mapping[str, Any]) -> ResolvedProfile:
    """The resolved profile with some Linear Alignment settings replaced for this request only."""
    if not overrides:
        return profile
    if profile.spec is None:
        raise InvalidInput("invalid_request", "Linear Alignment overrides need a profile (the principle comes "
                           "from it)", param="la")
    try:
        la = LASettings.model_validate({**profile.spec.la.model_dump(), **overrides})
    except ValidationError as exc:
        raise InvalidInput("invalid_request", f"la: {exc.errors()[0]['msg']}", param="la") from None
    return dataclasses.replace(profile, spec=profile.spec.model_copy(update={"la": la}))


def rejected(exc: RequestRejected) -> DomainError:
    """An engine's refusal as the domain error the API maps to a 4xx."""
    kind = TooLarge if exc.code in ("prompt_too_long", "exceeds_kv_budget") else InvalidInput
    return kind(exc.code, str(exc))


def engine_result(fut: asyncio.Future[GenerationResult]) -> GenerationResult:
    try:
        return fut.result()
    except RequestRejected as exc:
        raise rejected(exc) from None


def last_user(messages: list[Message]) -> str:
    """The text the language checks read: the last user message, or a raw text prompt itself."""
    raw = raw_prompt(messages)
    if raw is not None:
        return raw
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


@dataclass
class Generation:
    """One admitted generation: its engine request, its profile and its timing so far."""

    request: GenerationRequest
    profile: ResolvedProfile
    route: str
    arrived: float
    future: asyncio.Future[GenerationResult] | None = None
    events: TokenFeed | None = None  # streaming only
    first_token_at: float | None = None
    last_token_at: float | None = None
    _deadline: float = field(default=0.0)

    @property
    def id(self) -> str:
        return self.request.request_id

    def cancel(self) -> None:
        self.request.cancelled.set()


class Generations:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._bridge: LoopBridge | None = None

    def bridge(self, loop: asyncio.AbstractEventLoop) -> LoopBridge:
        """The engine-thread → loop hand-off (one per serving loop)."""
        if self._bridge is None or self._bridge.loop is not loop:
            self._bridge = LoopBridge(loop)
        return self._bridge

    # ---- planning --------------------------------------------------------------------------
    async def plan(self, cmd: GenerateCommand) -> Generation:
        """Resolve the profile, build the alignment and check the prompt budget (all 4xx first).

        One thread hop for all of it (a stored profile is a database read, the prompt budget a
        chat-template render and tokenisation): each hop costs the event loop more than the work
        of a small request, so they are not made one by one."""
        limit = self.rt.settings.max_tokens_limit
        max_tokens = cmd.max_tokens if cmd.max_tokens is not None else min(DEFAULT_MAX_TOKENS, limit)
        if max_tokens > limit:
            raise InvalidInput("invalid_request", f"max_tokens: must be at most {limit} on this server",
                               param="max_tokens")
        engine = self.rt.require_model().engine
        return await run_in_threadpool(self._plan, cmd, engine, max_tokens)

    def _plan(self, cmd: GenerateCommand, engine: Engine, max_tokens: int) -> Generation:
        resolved = with_la_overrides(self.rt.profiles.resolve(cmd.profile, engine), cmd.la_overrides)
        spec = resolved.spec
        prompt_language = None
        if spec is not None and spec.enforce_language:
            prompt_language = self.rt.language.detect(last_user(cmd.messages))
        alignment = alignment_for(spec, prompt_language, resolved.compiled, cmd.steer_strength)
        la = alignment.la
        size = engine.prompt_size(cmd.messages, la.principle if la else None, la.placement if la else "system")
        if size.longest >= engine.max_model_len:
            raise TooLarge("prompt_too_long",
                           f"prompt is {size.longest} tokens (with the principle); this model takes at most "
                           f"{engine.max_model_len - 1} prompt tokens",
                           param="prompt" if raw_prompt(cmd.messages) is not None else "messages")
        sampling = SamplingParams(max_tokens=max_tokens, temperature=cmd.temperature, top_p=cmd.top_p,
                                  top_k=cmd.top_k, seed=cmd.seed, stop=tuple(cmd.stop), ignore_eos=cmd.ignore_eos)
        req = GenerationRequest(request_id=f"gen-{uuid.uuid4().hex[:16]}", messages=cmd.messages,
                                sampling=sampling, alignment=alignment)
        now = time.perf_counter()
        return Generation(req, resolved, cmd.route, now, _deadline=now + self.rt.settings.request_timeout_s)

    # ---- admission ---------------------------------------------------------------------------
    def submit(self, gen: Generation, stream: bool) -> None:
        """Hand the request to the engine worker (429 when its queue is full)."""
        model = self.rt.require_model()
        bridge = self.bridge(asyncio.get_running_loop())
        metrics = self.rt.metrics
        if stream:
            loop = asyncio.get_running_loop()
            gen.events = TokenFeed(loop)

        def on_token(ev: TokenEvent) -> None:  # engine thread
            now = time.perf_counter()
            if gen.first_token_at is None:
                gen.first_token_at = now
                metrics.ttft.observe(now - gen.arrived)
            elif gen.last_token_at is not None:
                metrics.itl.observe(now - gen.last_token_at)
            gen.last_token_at = now
            if gen.events is not None:
                bridge.post(gen.events.push, ev)

        gen.request.on_token = on_token
        try:
            fut = model.worker.submit_generate(gen.request)
        except QueueFull as exc:
            raise Overloaded("overloaded", f"server is busy ({exc}); retry later", retry_after=2) from None
        except WorkerStopped as exc:
            raise Unavailable("shutting_down", str(exc)) from None
        metrics.in_flight.labels(gen.route).inc()

        def settled(f: asyncio.Future[GenerationResult]) -> None:
            metrics.in_flight.labels(gen.route).dec()
            if gen.events is not None:  # behind any token events still in the bridge
                bridge.post(gen.events.close, None)
            if not f.cancelled() and f.exception() is None:
                metrics.finished.labels(f.result().finish_reason).inc()

        fut.add_done_callback(settled)
        gen.future = fut

    async def start(self, cmd: GenerateCommand, stream: bool = False) -> Generation:
        gen = await self.plan(cmd)
        self.submit(gen, stream)
        return gen

    # ---- waiting -----------------------------------------------------------------------------
    async def wait(self, gen: Generation, is_disconnected: Callable[[], Awaitable[bool]]) -> Outcome:
        """The finished generation; cancels the work when the client leaves or the deadline passes."""
        assert gen.future is not None
        while True:
            remaining = gen._deadline - time.perf_counter()
            if remaining <= 0:
                gen.cancel()
                raise Timeout("timeout", f"generation exceeded {self.rt.settings.request_timeout_s:g}s")
            done, _ = await asyncio.wait({gen.future}, timeout=min(0.25, remaining))
            if done:
                return self.outcome(gen, engine_result(gen.future))
            if await is_disconnected():
                gen.cancel()
                log.info("client disconnected; generation cancelled", extra={"request_id": gen.id})
                raise ClientGone("client_closed", "client closed the connection")

    async def stream(self, gen: Generation) -> AsyncIterator[list[TokenEvent] | Outcome]:
        """Token events as they are decoded — every event already waiting comes in one list, so a
        client that reads slower than the engine decodes gets fewer, larger writes — then the
        :class:`Outcome`. Raises :class:`Timeout` past the deadline; the engine's own failure
        propagates. Closing the iterator early (the client went away) cancels the generation."""
        assert gen.future is not None and gen.events is not None
        feed = gen.events
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + gen._deadline - time.perf_counter(), feed.expire)
        try:
            finished = False
            while not finished:
                try:
                    batch, finished = await feed.take()
                except TimeoutError:
                    gen.cancel()
                    raise Timeout("timeout", "generation timed out") from None
                if batch:
                    yield batch
            yield self.outcome(gen, engine_result(gen.future))
        finally:
            timer.cancel()
            if not gen.future.done():
                gen.cancel()
                log.info("stream closed early; generation cancelled", extra={"request_id": gen.id})

    # ---- reporting ---------------------------------------------------------------------------
    def outcome(self, gen: Generation, result: GenerationResult) -> Outcome:
        """Record the finished generation's metrics and build its report."""
        total = time.perf_counter() - gen.arrived
        first = (gen.first_token_at - gen.arrived) if gen.first_token_at is not None else total
        queue_s = max(0.0, total - result.total_s)
        req = gen.request
        m = self.rt.metrics
        m.queue_time.observe(queue_s)
        m.prompt_tokens.inc(result.prompt_tokens)
        m.generated_tokens.labels(alignment_method(req.alignment)).inc(result.completion_tokens)
        la = req.alignment.la
        if la is not None and result.mean_strength is not None:
            m.la_strength.labels("adaptive" if la.adaptive else "fixed").observe(result.mean_strength)
        decode_s = max(result.total_s - result.first_token_s, 1e-9)
        tps = (result.completion_tokens - 1) / decode_s if result.completion_tokens > 1 else 0.0
        lang = self.rt.language.compare(last_user(req.messages), result.text)
        label = gen.profile.name or "none"
        m.language_checks.labels(label).inc()
        mismatch = m.language_mismatch.labels(label)  # exists at 0, so mismatch/checks is defined
        if not lang.match:
            mismatch.inc()
        return Outcome(
            id=req.request_id, model=self.rt.served_model_name, text=result.text,
            finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
            principle_prompt_tokens=result.principle_prompt_tokens, completion_tokens=result.completion_tokens,
            queue_s=queue_s, first_token_s=first, total_s=total, tokens_per_s=tps,
            alignment=alignment_applied(gen.profile, req.alignment, result), language=lang,
        )
