"""The streaming hot path's pieces, each against the slow obvious version it replaced: the token
feed (vs an asyncio.Queue with wait_for), the pre-rendered OpenAI chunk (vs pydantic + json), the
native token event (vs json.dumps of a dict) and the one-pass script counts (vs per character)."""

from __future__ import annotations

import asyncio
import json
import unicodedata

import pytest

from service.api.openai.routes import ChunkTemplate, _data
from service.api.openai.schemas import ChatCompletionChunk, ChoiceDelta, ChunkChoice, Completion, CompletionChoice
from service.api.routes_generate import _sse, token_event
from service.domain.bridge import TokenFeed
from service.engines.base import TokenEvent
from service.language.fidelity import script_counts

TEXTS = ["", " tok", 'say "hi"\n', "back\\slash\t", "日本語の文", "é ü ß ✓ 🙂", "\u0001alignserve-text\u0001",
         "</s>{\"a\": 1}", "\x00\x1f"]


def test_token_feed_batches_closes_and_expires() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        feed = TokenFeed(loop)

        def take() -> object:  # bounded: a broken feed fails, it does not hang the suite
            return asyncio.wait_for(feed.take(), 2)
        loop.call_soon(feed.push, 1)
        loop.call_soon(feed.push, 2)
        assert await take() == ([1, 2], False)  # everything waiting, in one batch
        loop.call_soon(feed.push, 3)
        loop.call_soon(feed.close)
        assert await take() == ([3], True)  # what is left, and closed
        assert await take() == ([], True)
        late = TokenFeed(loop)
        loop.call_later(0.01, late.expire)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(late.take(), 2)  # an empty open feed waits until its deadline
        waiting = TokenFeed(loop)
        task = asyncio.ensure_future(waiting.take())
        await asyncio.sleep(0.01)
        assert not task.done()  # no busy loop, no early return
        waiting.push(7)
        assert await asyncio.wait_for(task, 2) == ([7], False)

    asyncio.run(run())


@pytest.mark.parametrize("text", TEXTS)
def test_chunk_templates_render_the_same_bytes_as_the_models(text: str) -> None:
    def completion(t: str) -> dict[str, object]:
        return Completion(id="cmpl-1", created=5, model="m", choices=[CompletionChoice(text=t, finish_reason=None)]
                          ).model_dump(mode="json")

    def chat(t: str) -> dict[str, object]:
        return ChatCompletionChunk(id="c", created=5, model="m", choices=[ChunkChoice(
            delta=ChoiceDelta(role="assistant", content=t))]).model_dump(mode="json")

    for build in (completion, chat):
        assert ChunkTemplate.of(build).render(text) == _data(build(text))


def test_chunk_template_needs_its_marker_once() -> None:
    with pytest.raises(ValueError):
        ChunkTemplate({"text": "no marker"})


@pytest.mark.parametrize("text", TEXTS)
def test_token_event_matches_the_generic_event(text: str) -> None:
    ev = TokenEvent("r", 151643, text, 17)
    assert token_event(ev) == _sse("token", {"text": text, "index": 17, "token_id": 151643})


@pytest.mark.parametrize("text", [*TEXTS, "abc パリ 123", "Привет, мир! Hello", "안녕하세요 漢字 かな"])
def test_script_counts_equal_a_per_character_count(text: str) -> None:
    def script(ch: str) -> str | None:  # the classification, restated
        o = ord(ch)
        if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF:
            return "kana"
        if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF:
            return "han"
        if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
            return "hangul"
        if not ch.isalpha():
            return None
        name = unicodedata.name(ch, "")
        return next((s.lower() for s in ("LATIN", "CYRILLIC", "ARABIC", "DEVANAGARI", "GREEK", "HEBREW", "THAI")
                     if name.startswith(s)), "other")

    expected: dict[str, int] = {}
    for ch in text:
        s = script(ch)
        if s:
            expected[s] = expected.get(s, 0) + 1
    assert script_counts(text) == expected


def test_data_is_one_sse_line() -> None:
    assert json.loads(_data({"a": "x\ny"})[6:-2]) == {"a": "x\ny"}
