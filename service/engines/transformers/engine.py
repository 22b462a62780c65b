"""The transformers engine: the numerical reference (CPU or GPU), correctness before speed.

Each request becomes one stream (plain) or two (plain + principle, for Linear Alignment). All
streams of a batch are left-padded and decoded together with one KV cache; every step, the token
of an LA request is drawn once from the combined distribution and fed to *both* of its streams.
Finished requests are dropped from the cache so the batch shrinks as it goes.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from ...alignment.decoding import DecodePlan, DecodeRow, decode_step
from ...alignment.linear_alignment import LinearAlignmentConfig
from ...alignment.nucleus_threshold import warm_up
from ...alignment.sampling import row_generator
from ...alignment.spec import SteeringVector
from ..base import (
    EngineStats,
    GenerationRequest,
    GenerationResult,
    Message,
    PromptSize,
    TokenEvent,
    readout_sequences,
)
from ..chat import ChatPrompts
from ..labels import LabelTokens
from .hooks import HeadCapture, SteeringHooks

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float64": torch.float64}


def cache_keyword(model: Any) -> str:
    """The forward's KV-cache argument: ``cache`` from transformers 5.2x (``past_key_values`` is
    deprecated there and removed in 5.40), ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


@dataclass
class _Live:
    """Decoding state of one request inside a batch."""

    req: GenerationRequest
    plain_row: int
    principle_row: int | None
    prompt_tokens: int
    principle_tokens: int | None
    generator: torch.Generator | None
    started: float
    tokens: list[int] = field(default_factory=list)
    strengths: list[float] = field(default_factory=list)
    emitted_chars: int = 0
    text: str = ""
    first_token_s: float = 0.0
    finish: str | None = None

    @property
    def la(self) -> LinearAlignmentConfig | None:
        return self.req.alignment.la


class TransformersEngine:
    backend = "transformers"

    def __init__(self, model_path: str, device: str = "auto", dtype: str = "auto",
                 max_model_len: int = 4096, default_system: str | None = None) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model_name = model_path
        self.default_system = default_system
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{model_path} has no chat template; alignserve needs one")
        self.prompts = ChatPrompts(self.tokenizer, default_system)
        # Attention-logit soft-capping (Gemma-2) is skipped by SDPA, which some transformers
        # versions still pick for such models: the reference must use the eager kernel there.
        softcap = getattr(AutoConfig.from_pretrained(model_path).get_text_config(), "attn_logit_softcapping", None)
        extra: dict[str, Any] = {"attn_implementation": "eager"} if softcap else {}
        model: Any = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype, **extra)
        self.model: Any = model.to(self.device)
        self.model.eval()
        warm_up(self.device)  # on CUDA: the sort-free nucleus kernel, compiled before the first request
        self._cache_kw = cache_keyword(self.model)
        cfg = self.model.config
        self.num_layers = int(cfg.num_hidden_layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.max_model_len = min(max_model_len, int(getattr(cfg, "max_position_embeddings", max_model_len)))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(int(e) for e in eos)
        self.label_tokens = LabelTokens(self.tokenizer)
        self._running = 0  # streams in the batch being decoded (read by the metrics scrape)

    # ---- prompts -------------------------------------------------------------------------
    def encode_chat(self, messages: list[Message]) -> list[int]:
        return self.prompts.encode_chat(messages)

    def _streams(self, req: GenerationRequest) -> tuple[list[int], list[int] | None]:
        la = req.alignment.la
        return self.prompts.streams(req.messages, la.principle if la else None, la.placement if la else "system")

    def prompt_size(self, messages: list[Message], principle: str | None, placement: str = "system") -> PromptSize:
        return self.prompts.size(messages, principle, placement)

    # ---- batched forward helpers ---------------------------------------------------------
    def _left_pad(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache | None,
                 positions: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
        # logits_to_keep=1: only the last position's logits are read; the full [batch, tokens, vocab]
        # tensor of a prefill is gigabytes (80 judge queries of ~200 tokens: ~10 GB in float32)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._cache_kw: cache})
        new_cache = out.cache if self._cache_kw == "cache" else out.past_key_values
        return out.logits[:, -1, :].float(), new_cache

    # ---- generation ----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        started = time.perf_counter()
        seqs: list[list[int]] = []
        steer_rows: list[tuple[SteeringVector, ...]] = []
        lives: list[_Live] = []
        for req in requests:
            plain, principle = self._streams(req)
            plain_row = len(seqs)
            seqs.append(plain)
            steer_rows.append(req.alignment.steering)
            principle_row = None
            if principle is not None:
                principle_row = len(seqs)
                seqs.append(principle)
                steer_rows.append(req.alignment.steering)
            gen = row_generator(req.sampling, self.device)  # on the logits' device
            lives.append(_Live(req, plain_row, principle_row, len(plain),
                               len(principle) if principle else None, gen, started))

        ids, mask = self._left_pad(seqs)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        hooks = SteeringHooks(self.model, steer_rows, self.head_dim, self.dtype, self.device)
        self._running = len(seqs)
        try:
            return self._decode(lives, hooks, ids, mask, positions, len(seqs))
        finally:
            self._running = 0

    def _decode(self, lives: list[_Live], hooks: SteeringHooks, ids: torch.Tensor, mask: torch.Tensor,
                positions: torch.Tensor, n_streams: int) -> list[GenerationResult]:
        with hooks:
            logits, cache = self._forward(ids, mask, None, positions)
            next_pos = positions[:, -1] + 1
            streams = list(range(n_streams))  # stream id of each cache row (host copy: no syncs)
            hooks.phase = "decode"
            active = list(lives)
            plan, feed_at, feed_from = self._plan(active, streams)
            while True:
                tokens = self._step(active, logits, plan)
                still = [j for j, lv in enumerate(active) if lv.finish is None]
                if not still:
                    break
                if len(still) < len(active):  # the batch changes: trim the cache, rebuild the plan
                    tokens = tokens.index_select(0, torch.tensor(still, dtype=torch.long, device=self.device))
                    active = [active[j] for j in still]
                    live = {s for lv in active for s in (lv.plain_row, lv.principle_row) if s is not None}
                    kept = [i for i, s in enumerate(streams) if s in live]
                    keep = torch.tensor(kept, dtype=torch.long, device=self.device)
                    for layer in cache.layers:
                        layer.batch_select_indices(keep)  # type: ignore[union-attr]
                    mask, next_pos = mask[keep], next_pos[keep]
                    streams = [streams[i] for i in kept]
                    hooks.select_rows(keep)
                    self._running = len(streams)
                    plan, feed_at, feed_from = self._plan(active, streams)
                step_ids = torch.full((len(streams),), self.pad_id, dtype=torch.long, device=self.device)
                step_ids.index_copy_(0, feed_at, tokens.index_select(0, feed_from))  # both streams of a pair
                step_ids = step_ids.unsqueeze(-1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
                logits, cache = self._forward(step_ids, mask, cache, next_pos.unsqueeze(-1))
                next_pos = next_pos + 1
        return [self._result(lv) for lv in lives]

    def _plan(self, active: list[_Live], streams: list[int]) -> tuple[DecodePlan, torch.Tensor, torch.Tensor]:
        """Per-row tensors of the current batch (rebuilt only when a request leaves it), and which
        cache row receives which request's token (both streams of an LA request get the same)."""
        row_of = {s: i for i, s in enumerate(streams)}
        plan = DecodePlan.build([
            DecodeRow(row_of[lv.plain_row], None if lv.principle_row is None else row_of[lv.principle_row],
                      lv.la, lv.req.sampling, lv.generator)
            for lv in active], self.device)
        at = [(row_of[s], j) for j, lv in enumerate(active) for s in (lv.plain_row, lv.principle_row)
              if s is not None]
        feed_at = torch.tensor([s for s, _ in at], dtype=torch.long, device=self.device)
        feed_from = torch.tensor([j for _, j in at], dtype=torch.long, device=self.device)
        return plan, feed_at, feed_from

    def stats(self) -> EngineStats:
        return EngineStats(running_sequences=self._running)

    def _step(self, active: list[_Live], logits: torch.Tensor, plan: DecodePlan) -> torch.Tensor:
        """Draw one token for every request of the plan (one host read per step) and record it."""
        draw = decode_step(logits, plan)
        tokens = draw.tokens.tolist()
        strengths = iter(draw.strength.tolist())
        now = time.perf_counter()
        for lv, token in zip(active, tokens, strict=True):
            r = next(strengths) if lv.la is not None else None
            if lv.req.cancelled.is_set():
                lv.finish = "cancelled"
                continue
            if r is not None:
                lv.strengths.append(r)
            if not lv.tokens:
                lv.first_token_s = now - lv.started
            lv.tokens.append(token)
            self._advance_text(lv, token)
        return draw.tokens

    def _advance_text(self, lv: _Live, token: int) -> None:
        sp = lv.req.sampling
        lv.text = str(self.tokenizer.decode(lv.tokens, skip_special_tokens=True))
        if token in self.eos_ids and not sp.ignore_eos:
            lv.finish = "stop"
        hit = min((i for i in (lv.text.find(s) for s in sp.stop) if i >= 0), default=-1)
        if hit >= 0:
            lv.text = lv.text[:hit]
            lv.finish = "stop"
        longest_stream = max(lv.prompt_tokens, lv.principle_tokens or 0) + len(lv.tokens)
        if lv.finish is None and (len(lv.tokens) >= sp.max_tokens or longest_stream >= self.max_model_len):
            lv.finish = "length"
        # Stream only text that is final: no half characters, nothing that could start a stop string.
        hold = 0 if lv.finish else max((len(s) - 1 for s in sp.stop), default=0)
        ready = len(lv.text) - hold
        if not lv.finish and lv.text.endswith("\ufffd"):
            ready = min(ready, len(lv.text.rstrip("\ufffd")))
        delta = lv.text[lv.emitted_chars:ready] if ready > lv.emitted_chars else ""
        if delta:
            lv.emitted_chars = ready
        if lv.req.on_token is not None:
            lv.req.on_token(TokenEvent(lv.req.request_id, token, delta, len(lv.tokens) - 1))

    def _result(self, lv: _Live) -> GenerationResult:
        return GenerationResult(
            request_id=lv.req.request_id, text=lv.text, token_ids=list(lv.tokens),
            finish_reason=lv.finish or "length",  # type: ignore[arg-type]
            prompt_tokens=lv.prompt_tokens, principle_prompt_tokens=lv.principle_tokens,
            completion_tokens=len(lv.tokens), strengths=lv.strengths,
            first_token_s=lv.first_token_s, total_s=time.perf_counter() - lv.started,
        )

    # ---- scoring and activations ---------------------------------------------------------
    @torch.inference_mode()
    def _last_logits(self, conversations: Sequence[list[Message]],
                     steering: Sequence[SteeringVector] = ()) -> torch.Tensor:
        seqs = [self.encode_chat(c) for c in conversations]
        ids, mask = self._left_pad(seqs)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        with SteeringHooks(self.model, [tuple(steering)] * len(seqs), self.head_dim, self.dtype, self.device):
            logits, _ = self._forward(ids, mask, None, positions)
        return logits

    def label_probability(self, conversations: Sequence[list[Message]], labels: tuple[str, str],
                          steering: Sequence[SteeringVector] = ()) -> list[float]:
        first, second = self.label_tokens.ids(labels)
        if not conversations:
            return []
        return _first_of_two(self._last_logits(conversations, steering), first, second).tolist()

    @torch.inference_mode()
    def capture_head_activations(self, conversations: Sequence[list[Message]],
                                 completions: Sequence[str] | None = None) -> torch.Tensor:
        seqs = readout_sequences(self.encode_chat, self.tokenizer, conversations, completions)
        ids, mask = self._left_pad(seqs)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        with HeadCapture(self.model) as cap:
            self._forward(ids, mask, None, positions)
        stacked = torch.stack([cap.outputs[i] for i in range(self.num_layers)], dim=1)
        return stacked.view(len(seqs), self.num_layers, self.num_heads, self.head_dim).cpu()

    def open_readout(self, conversations: Sequence[list[Message]]) -> _Readout:
        return _Readout(self, [self.encode_chat(c) for c in conversations])

    def close(self) -> None:
        del self.model


def _first_of_two(logits: torch.Tensor, first: int, second: int) -> torch.Tensor:
    """``[n]``: softmax over the two label tokens' logits, the first one's share."""
    return torch.softmax(torch.stack([logits[:, first], logits[:, second]], dim=-1), dim=-1)[:, 0]


class _Readout:
    """Prefix KV cache of a fixed set of conversations; each steering option costs one token per
    conversation (the cache is cropped back to the prefix after every option)."""

    def __init__(self, engine: TransformersEngine, seqs: list[list[int]]) -> None:
        if any(len(s) < 2 for s in seqs):
            raise ValueError("readout conversations need at least two tokens")
        self.engine = engine
        self.size = len(seqs)
        ids, mask = engine._left_pad(seqs)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        self._last_ids, self._mask, self._last_pos = ids[:, -1:], mask, positions[:, -1:]
        with torch.inference_mode():
            _, self._cache = engine._forward(ids[:, :-1], mask[:, :-1], None, positions[:, :-1])

    @torch.inference_mode()
    def label_probability(self, options: Sequence[Sequence[SteeringVector]],
                          labels: tuple[str, str]) -> torch.Tensor:
        eng = self.engine
        first, second = eng.label_tokens.ids(labels)
        out = torch.empty(len(options), self.size)
        for k, steering in enumerate(options):
            with SteeringHooks(eng.model, [tuple(steering)] * self.size, eng.head_dim, eng.dtype, eng.device):
                logits, cache = eng._forward(self._last_ids, self._mask, self._cache, self._last_pos)
            cache.crop(-1)  # drop the readout token: back to the prefix
            out[k] = _first_of_two(logits, first, second).cpu()
        return out

    def close(self) -> None:
        del self._cache
