"""English reward model behind ``POST /score`` (``method: "reward_model"``).

Any Hugging Face sequence-classification reward model with one scalar output works: the
conversation (user prompt, assistant response) goes through the RM's own chat template, the
score is the logit at the last token. Hong et al. (2024), *Cross-lingual Transfer of Reward
Models in Multilingual Alignment*, found English RMs rank other languages' responses well, so
the RM is applied as is to responses in any language.

Two runners share one interface: ``TransformersRewardModel`` (CPU or GPU, batched by length)
and ``VLLMRewardModel`` (vLLM's pooling runner, ``task="classify"`` with the activation off, in
the same process as the generator and with its own share of GPU memory). Both keep their work
off the request thread and bounded: ``submit`` raises ``Overloaded`` past ``max_pending``.
Both watch their own liveness (``health``): an error that means the RM is gone (vLLM's engine
core died, a poisoned CUDA context) fails it for good — ``/score`` with the RM answers 503,
``/readyz`` reports it, and the generator keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..engines.base import Message
from ..engines.chat import encode_chat
from ..scheduling.health import EngineHealth, EngineOutOfMemory, describe, is_fatal, is_out_of_memory
from ..scheduling.worker import Overloaded

DEFAULT_TOKENS_PER_BATCH = 8192


def rm_conversation(prompt: str, response: str) -> list[Message]:
    """What the reward model reads: the user's prompt and the candidate as the assistant turn."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def length_batches(lengths: Sequence[int], tokens_per_batch: int) -> list[list[int]]:
    """Indices grouped so that each batch, padded to its longest member, stays under
    ``tokens_per_batch`` tokens; similar lengths go together (sorted), so padding is small.
    A single item longer than the budget gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max([lengths[j] for j in current] + [lengths[i]])
        if current and longest * (len(current) + 1) > tokens_per_batch:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


RM_UNAVAILABLE = "reward_model_unavailable"


class RewardModelRunner(Protocol):
    name: str  # what /score reports as the model
    max_length: int  # tokens the RM reads per conversation
    health: EngineHealth  # dead for good once the RM's engine died

    def count_tokens(self, conversation: list[Message]) -> int: ...

    def submit(self, conversations: Sequence[list[Message]]) -> concurrent.futures.Future[list[float]]:
        """Scores (one float per conversation), computed off the caller's thread."""
        ...

    def close(self) -> None: ...


@dataclass
class _Pending:
    """Counts work handed out and not finished, so the runner can refuse beyond ``limit``."""

    limit: int
    n: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.n >= self.limit:
                raise Overloaded(f"{self.n} reward-model calls pending")
            self.n += 1

    def release(self) -> None:
        with self._lock:
            self.n -= 1


class _Tokenized:
    """Chat-template tokenisation shared by both runners (the RM's own template), and their
    liveness bookkeeping."""

    tokenizer: Any
    health: EngineHealth

    def _check_alive(self) -> None:
        if self.health.probe(self):
            raise self.health.error(RM_UNAVAILABLE)

    def _failure(self, exc: Exception) -> Exception:
        if is_fatal(exc):
            self.health.mark_dead(describe(exc))
            return self.health.error(RM_UNAVAILABLE)
        if is_out_of_memory(exc):
            return EngineOutOfMemory(exc)
        return exc

    def encode(self, conversation: list[Message]) -> list[int]:
        return encode_chat(self.tokenizer, conversation, generation_prompt=False)

    def count_tokens(self, conversation: list[Message]) -> int:
        return len(self.encode(conversation))


class TransformersRewardModel(_Tokenized):
    """The reference runner: ``AutoModelForSequenceClassification``, left-padded length batches."""

    def __init__(self, path: str, device: str = "auto", dtype: str = "auto", max_length: int = 4096,
                 tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH, max_pending: int = 64,
                 name: str | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..engines.transformers.engine import pick_device, pick_dtype

        self.name = name or path
        self.health = EngineHealth("reward model")
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"reward model {path} has no chat template")
        model: Any = AutoModelForSequenceClassification.from_pretrained(path, dtype=self.dtype)
        if int(model.config.num_labels) != 1:
            raise ValueError(f"reward model {path} has {model.config.num_labels} labels; a scalar RM has 1")
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        self.pad_id = int(model.config.pad_token_id)
        self.model = model.to(self.device).eval()
        self.max_length = max_length
        self.tokens_per_batch = tokens_per_batch
        self._pending = _Pending(max_pending)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-model")

    def _batch(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):  # left padding: the scored token is the last column
            ids[k, width - len(r):] = torch.tensor(r)
            mask[k, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def _run(self, conversations: Sequence[list[Message]], features: bool) -> torch.Tensor:
        encoded = [self.encode(c) for c in conversations]
        for k, e in enumerate(encoded):
            if len(e) > self.max_length:
                raise ValueError(f"conversation {k} has {len(e)} tokens; the reward model reads {self.max_length}")
        width = self.model.config.hidden_size if features else 1
        out = torch.zeros((len(encoded), width), dtype=torch.float64)
        captured: list[torch.Tensor] = []
        hook = (self.model.score.register_forward_hook(lambda m, i, o: captured.append(i[0][:, -1, :]))
                if features else None)
        try:
            for idx in length_batches([len(e) for e in encoded], self.tokens_per_batch):
                ids, mask = self._batch([encoded[i] for i in idx])
                positions = (mask.cumsum(-1) - 1).clamp_min(0)  # each row counts from its first real token
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
                out[idx] = (captured.pop() if features else logits).double().cpu()
        finally:
            if hook is not None:
                hook.remove()
        return out

    def rewards(self, conversations: Sequence[list[Message]]) -> list[float]:
        return [float(x) for x in self._run(conversations, features=False)[:, 0]]

    def features(self, conversations: Sequence[list[Message]]) -> torch.Tensor:
        """``[n, hidden]`` float64: the input of the scalar head at the scored token (what a
        Bradley-Terry head is trained on; ``rewards == features @ score.weight.T``)."""
        return self._run(conversations, features=True)

    def submit(self, conversations: Sequence[list[Message]]) -> concurrent.futures.Future[list[float]]:
        self._check_alive()
        self._pending.take()
        convs = list(conversations)

        def run() -> list[float]:
            try:
                if self.health.dead:  # died while this call waited
                    raise self.health.error(RM_UNAVAILABLE)
                return self.rewards(convs)
            except Exception as exc:
                failure = self._failure(exc)
                if failure is exc:
                    raise
                raise failure from exc
            finally:  # before the result is visible, so a caller that saw it can submit again
                self._pending.release()

        try:
            return self._pool.submit(run)
        except RuntimeError:  # pool shut down
            self._pending.release()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class VLLMRewardSettings:
    gpu_memory_utilization: float = 0.1
    max_model_len: int = 4096
    max_num_seqs: int = 128
    dtype: str = "bfloat16"
    enforce_eager: bool = False


class VLLMRewardModel(_Tokenized):
    """vLLM's pooling runner for the RM (``runner="pooling"``, ``task="classify"``, no sigmoid).

    It runs its own ``AsyncLLM`` (engine core in its own subprocess) on a private event loop, in
    the same server process as the generator; the two split GPU memory by their
    ``gpu_memory_utilization`` shares. Requests batch continuously inside vLLM."""

    def __init__(self, path: str, settings: VLLMRewardSettings | None = None, max_pending: int = 64,
                 name: str | None = None) -> None:
        from transformers import AutoTokenizer

        self.settings = settings or VLLMRewardSettings()
        self.name = name or path
        self.health = EngineHealth("reward model")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"reward model {path} has no chat template")
        self.max_length = self.settings.max_model_len
        self._pending = _Pending(max_pending)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-rm-loop", daemon=True)
        self._thread.start()
        self.llm: Any = asyncio.run_coroutine_threadsafe(self._start(path), self.loop).result()

    async def _start(self, path: str) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        args = AsyncEngineArgs(model=path, tokenizer=path, runner="pooling", dtype=s.dtype,
                               max_model_len=s.max_model_len, gpu_memory_utilization=s.gpu_memory_utilization,
                               max_num_seqs=s.max_num_seqs, enforce_eager=s.enforce_eager)
        return AsyncLLM.from_engine_args(args)

    async def arewards(self, conversations: Sequence[list[Message]]) -> list[float]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        async def one(i: int, convo: list[Message]) -> float:
            ids = self.encode(convo)
            if len(ids) > self.max_length:
                raise ValueError(f"conversation {i} has {len(ids)} tokens; the reward model reads {self.max_length}")
            params = PoolingParams(task="classify", use_activation=False)
            final = None
            async for out in self.llm.encode(TokensPrompt(prompt_token_ids=ids), params,
                                             f"rm-{uuid.uuid4().hex[:8]}-{i}"):
                final = out
            assert final is not None
            return float(final.outputs.data.reshape(-1)[0])

        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(conversations))))

    def rewards(self, conversations: Sequence[list[Message]]) -> list[float]:
        return self.submit(conversations).result()

    def health_error(self) -> str | None:
        """vLLM's own flag: set within moments of its engine-core process exiting."""
        return "the vLLM engine core is dead" if self.llm.errored else None

    def submit(self, conversations: Sequence[list[Message]]) -> concurrent.futures.Future[list[float]]:
        self._check_alive()
        self._pending.take()

        async def run(convs: list[list[Message]]) -> list[float]:
            try:
                return await self.arewards(convs)
            except Exception as exc:
                failure = self._failure(exc)
                if failure is exc:
                    raise
                raise failure from exc
            finally:
                self._pending.release()

        return asyncio.run_coroutine_threadsafe(run(list(conversations)), self.loop)

    def close(self) -> None:
        try:
            self.llm.shutdown()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
