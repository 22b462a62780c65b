"""The scoring use case: one registry of methods behind ``POST /score`` (and any other API shape).

``judge`` (the served LLM's P("Yes") to an English rubric) and ``activation_rm`` (the same with a
compiled profile's heads patched) run on the engine worker between generation steps;
``reward_model`` (an English Bradley-Terry RM, any language) runs on its own runner. Each method
checks its input (4xx) before any work, then scores; the registry records metrics and ranks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from starlette.concurrency import run_in_threadpool

from ..engines.base import RequestRejected
from ..reward import Scorer
from ..reward.activation_rm import ActivationRMScorer
from ..reward.judge import GenerativeJudge, rubric_for
from ..reward.ranked import MAX_RANKED_RESPONSES
from ..reward.reward_model import rm_conversation
from ..scheduling.worker import Overloaded as QueueFull
from ..scheduling.worker import WorkerStopped
from .errors import InvalidInput, Overloaded, Timeout, TooLarge, Unavailable
from .generation import rejected
from .profile_spec import ProfileSpec
from .profiles import ResolvedProfile

if TYPE_CHECKING:
    from ..runtime import Runtime

# Room the judge template and the answer token take around prompt + response.
_JUDGE_OVERHEAD_TOKENS = 128


@dataclass(frozen=True)
class ScoreCommand:
    prompt: str
    responses: Sequence[str]
    method: str = "judge"
    rubric: str | None = None
    profile: str | ProfileSpec | None = None
    route: str = "/score"


@dataclass(frozen=True)
class Scored:
    scores: list[float]
    rubric: str | None = None  # the judge's question (judge, activation_rm)
    model: str | None = None  # the reward model that scored (reward_model)
    profile: ResolvedProfile = ResolvedProfile()


@dataclass(frozen=True)
class ScoreOutcome:
    method: str
    scores: list[float]
    ranking: list[int]  # indices of responses, best first
    rubric: str | None
    model: str | None
    profile: ResolvedProfile


class ScoringMethod(Protocol):
    name: str

    async def score(self, cmd: ScoreCommand) -> Scored: ...


async def _wait(rt: Runtime, fut: asyncio.Future[list[float]] | concurrent.futures.Future[list[float]],
                what: str) -> list[float]:
    waitable = asyncio.wrap_future(fut) if isinstance(fut, concurrent.futures.Future) else fut
    try:
        return await asyncio.wait_for(waitable, timeout=rt.settings.request_timeout_s)
    except TimeoutError:
        raise Timeout("timeout", f"{what} timed out") from None
    except RequestRejected as exc:
        raise rejected(exc) from None


class EngineScoring:
    """A scorer that asks the served LLM (``reward.Scorer``) through the engine worker."""

    def __init__(self, rt: Runtime, name: str, scorer: Scorer, needs_compiled: bool) -> None:
        self.rt, self.name, self.scorer, self.needs_compiled = rt, name, scorer, needs_compiled

    async def score(self, cmd: ScoreCommand) -> Scored:
        model = self.rt.require_model()
        engine = model.engine
        resolved = await run_in_threadpool(self.rt.profiles.resolve, cmd.profile, engine)
        spec, compiled = resolved.spec, resolved.compiled
        if self.needs_compiled and compiled is None:
            raise InvalidInput("profile_not_compiled", f"method {self.name!r} needs a stored profile compiled "
                               "from activation_rm examples", param="profile")
        rubric = rubric_for(spec.principle if spec else None, cmd.rubric or (spec.rubric if spec else None))
        longest = max(cmd.responses, key=len)
        if compiled is not None and compiled.format == "ranked" and self.name == "activation_rm":
            if len(cmd.responses) > MAX_RANKED_RESPONSES:
                raise InvalidInput("too_many_responses", "a ranked profile compares every pair of responses; at "
                                   f"most {MAX_RANKED_RESPONSES}, got {len(cmd.responses)}", param="responses")
            longest = "\n".join(sorted(cmd.responses, key=len)[-2:])  # a ranked query shows two responses
        size = await run_in_threadpool(engine.prompt_size, [{"role": "user", "content": cmd.prompt + longest}], None)
        if size.plain + _JUDGE_OVERHEAD_TOKENS >= engine.max_model_len:
            raise TooLarge("prompt_too_long", f"prompt plus the longest response is about {size.plain} tokens; "
                           f"the model takes {engine.max_model_len}", param="responses")
        responses = list(cmd.responses)
        try:
            fut = model.worker.submit_call(
                lambda eng: self.scorer.score(eng, cmd.prompt, responses, rubric, compiled))
        except QueueFull as exc:
            raise Overloaded("overloaded", f"server is busy ({exc}); retry later", retry_after=2) from None
        except WorkerStopped as exc:
            raise Unavailable("shutting_down", str(exc)) from None
        return Scored(await _wait(self.rt, fut, "scoring"), rubric=rubric, profile=resolved)


class RewardModelScoring:
    """The English reward model: a scalar reward per response, no rubric or profile."""

    name = "reward_model"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def score(self, cmd: ScoreCommand) -> Scored:
        if cmd.profile is not None or cmd.rubric is not None:
            raise InvalidInput("not_applicable", "method 'reward_model' takes neither a rubric nor a profile")
        rm = self.rt.require_reward_model()
        conversations = [rm_conversation(cmd.prompt, r) for r in cmd.responses]
        longest = max(conversations, key=lambda c: len(c[1]["content"]))
        n = await run_in_threadpool(rm.count_tokens, longest)
        if n > rm.max_length:
            raise TooLarge("prompt_too_long", f"prompt plus the longest response is {n} tokens; the reward "
                           f"model reads {rm.max_length}", param="responses")
        try:
            fut = rm.submit(conversations)
        except QueueFull as exc:
            raise Overloaded("overloaded", f"reward model is busy ({exc}); retry later", retry_after=2) from None
        return Scored(await _wait(self.rt, fut, "reward-model scoring"), model=rm.name)


class Scoring:
    """The registry: method name → :class:`ScoringMethod`."""

    def __init__(self, rt: Runtime, scorers: dict[str, Scorer] | None = None) -> None:
        self.rt = rt
        given = scorers or {}
        self.methods: dict[str, ScoringMethod] = {
            "judge": EngineScoring(rt, "judge", given.get("judge", GenerativeJudge()), needs_compiled=False),
            "activation_rm": EngineScoring(rt, "activation_rm", given.get("activation_rm", ActivationRMScorer()),
                                           needs_compiled=True),
            "reward_model": RewardModelScoring(rt),
        }

    async def score(self, cmd: ScoreCommand) -> ScoreOutcome:
        method = self.methods.get(cmd.method)
        if method is None:
            raise InvalidInput("unknown_method", f"scoring method {cmd.method!r} is not available "
                               f"(choose from {sorted(self.methods)})", param="method")
        gauge = self.rt.metrics.in_flight.labels(cmd.route)
        gauge.inc()
        try:
            scored = await method.score(cmd)
        finally:
            gauge.dec()
        for s in scored.scores:
            if cmd.method == "reward_model":
                self.rt.metrics.rewards.observe(s)
            else:
                self.rt.metrics.scores.labels(cmd.method).observe(s)
        ranking = sorted(range(len(scored.scores)), key=lambda i: -scored.scores[i])
        return ScoreOutcome(cmd.method, scored.scores, ranking, scored.rubric, scored.model, scored.profile)
