"""Raw text prompts (``/v1/completions``): ``tokenizer(text)`` ids, no chat template, no default
system message; Linear Alignment's principle stream is ``principle + "\\n\\n" + text``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.domain.generation import last_user
from service.engines.base import COMPLETION_ROLE, GenerationRequest, PromptSize, completion_prompt, raw_prompt
from service.engines.chat import ChatPrompts, with_principle, with_system
from service.engines.transformers.engine import TransformersEngine

from .tiny_model import greedy_continuation

TEXT = "The capital of France is"
PRINCIPLE = "Always answer in Japanese."


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def bos_tok(tiny_model_dir: Path) -> Any:
    """The tiny tokenizer made to add a BOS token, as Llama's does."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    bos = t.convert_tokens_to_ids("<|endoftext|>")
    t._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    assert t(TEXT)["input_ids"][0] == bos
    return t


def template_ids(t: Any) -> set[int]:
    return {t.convert_tokens_to_ids(s) for s in ("<|im_start|>", "<|im_end|>")}


def test_raw_plain_stream_is_the_tokenizers_own_ids(tok: Any) -> None:
    prompts = ChatPrompts(tok, default_system="You are a helpful assistant.")
    plain, principle = prompts.streams(completion_prompt(TEXT), None)
    assert plain == tok(TEXT)["input_ids"] and principle is None
    assert not template_ids(tok) & set(plain)  # no chat template, no default system message
    assert prompts.encode(completion_prompt(TEXT)) == plain
    chat_plain, _ = prompts.streams([{"role": "user", "content": TEXT}], None)  # chats keep the template
    assert template_ids(tok) <= set(chat_plain) and len(chat_plain) > len(plain)


def test_raw_keeps_the_tokenizers_special_tokens(bos_tok: Any) -> None:
    plain, principle = ChatPrompts(bos_tok, "SYS").streams(completion_prompt(TEXT), PRINCIPLE)
    assert plain == bos_tok(TEXT)["input_ids"] and plain[0] == bos_tok.convert_tokens_to_ids("<|endoftext|>")
    assert principle == bos_tok(f"{PRINCIPLE}\n\n{TEXT}")["input_ids"]


def test_raw_principle_stream_leads_with_the_principle(tok: Any) -> None:
    prompts = ChatPrompts(tok, default_system="You are a helpful assistant.")
    plain, principle = prompts.streams(completion_prompt(TEXT), PRINCIPLE)
    assert plain == tok(TEXT)["input_ids"]
    assert principle == tok(PRINCIPLE + "\n\n" + TEXT)["input_ids"]
    assert not template_ids(tok) & set(principle)
    assert prompts.streams(completion_prompt(TEXT), PRINCIPLE, "user") == (plain, principle)  # no placement
    assert prompts.size(completion_prompt(TEXT), PRINCIPLE) == PromptSize(len(plain), len(principle))
    assert prompts.size(completion_prompt(TEXT), None) == PromptSize(len(plain), None)


def test_raw_prompts_are_refused_where_only_chats_make_sense(tok: Any, tiny_engine: TransformersEngine) -> None:
    raw = completion_prompt(TEXT)
    assert raw_prompt(raw) == TEXT and raw_prompt([{"role": "user", "content": TEXT}]) is None
    with pytest.raises(ValueError):
        raw_prompt([{"role": "system", "content": "s"}, {"role": COMPLETION_ROLE, "content": TEXT}])
    for build in (lambda: with_system(raw, "SYS"), lambda: with_principle(raw, PRINCIPLE, "SYS"),
                  lambda: ChatPrompts(tok).encode_chat(raw)):
        with pytest.raises(ValueError):
            build()
    # readouts at the assistant's first token (reward scoring, head capture) never take one
    with pytest.raises(ValueError, match="raw text prompt"):
        tiny_engine.label_probability([raw], ("Yes", "No"))
    with pytest.raises(ValueError, match="raw text prompt"):
        tiny_engine.capture_head_activations([raw])


def test_language_check_reads_the_raw_prompt() -> None:
    assert last_user(completion_prompt(TEXT)) == TEXT
    assert last_user([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}]) == "c"


def _req(rid: str, messages: list[dict[str, str]], la: LinearAlignmentConfig | None = None,
         max_tokens: int = 10) -> GenerationRequest:
    return GenerationRequest(rid, messages, SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                             AlignmentSpec(la=la))


def test_transformers_engine_continues_the_raw_ids(tiny_engine: TransformersEngine) -> None:
    [res] = tiny_engine.generate([_req("raw", completion_prompt(TEXT))])
    ids = tiny_engine.tokenizer(TEXT)["input_ids"]
    assert res.token_ids == greedy_continuation(tiny_engine.model, ids, 10)
    assert res.prompt_tokens == len(ids) and res.principle_prompt_tokens is None


def test_transformers_engine_la_on_raw_uses_the_leading_paragraph(tiny_engine: TransformersEngine) -> None:
    """r=0 without the plausibility mask decodes the principle stream alone: it must be the raw
    ``principle + "\\n\\n" + text``."""
    la = LinearAlignmentConfig(PRINCIPLE, strength=0.0, plausibility_top_p=1.0)
    [aligned] = tiny_engine.generate([_req("la", completion_prompt(TEXT), la)])
    [lead] = tiny_engine.generate([_req("p", completion_prompt(f"{PRINCIPLE}\n\n{TEXT}"))])
    assert aligned.token_ids == lead.token_ids
    assert aligned.principle_prompt_tokens == len(tiny_engine.tokenizer(f"{PRINCIPLE}\n\n{TEXT}")["input_ids"])
    assert aligned.prompt_tokens == len(tiny_engine.tokenizer(TEXT)["input_ids"])
    [strong] = tiny_engine.generate([_req("s", completion_prompt(TEXT), LinearAlignmentConfig(PRINCIPLE, 8.0))])
    [plain] = tiny_engine.generate([_req("n", completion_prompt(TEXT))])
    assert strong.token_ids != plain.token_ids
