"""The transformers engine on the shared decoding step: generator device, seeds, LA sampling modes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import service.engines.transformers.engine as engine_module
from service.alignment.linear_alignment import LinearAlignmentConfig
from service.alignment.sampling import SamplingParams
from service.alignment.spec import AlignmentSpec
from service.engines.base import GenerationRequest
from service.engines.transformers.engine import TransformersEngine

Q = [{"role": "user", "content": "Tell me about the sea."}]
PRINCIPLE = "Always be polite."


def req(rid: str, la: LinearAlignmentConfig | None = None, **sampling: object) -> GenerationRequest:
    params = SamplingParams(max_tokens=int(sampling.pop("max_tokens", 8)), **sampling)  # type: ignore[arg-type]
    return GenerationRequest(rid, Q, params, AlignmentSpec(la=la))


def test_generators_are_made_on_the_engine_device(tiny_engine: TransformersEngine,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.device | str] = []
    real = engine_module.row_generator

    def spy(params: SamplingParams, device: torch.device | str) -> torch.Generator | None:
        seen.append(device)
        gen = real(params, device)
        assert gen is None or gen.device == torch.device(device)
        return gen

    monkeypatch.setattr(engine_module, "row_generator", spy)
    tiny_engine.generate([req("s", LinearAlignmentConfig(PRINCIPLE), temperature=1.0, seed=3)])
    assert seen == [tiny_engine.device]  # the logits' device, never a default CPU generator


def test_seeded_request_is_the_same_whatever_shares_its_batch(tiny_engine: TransformersEngine) -> None:
    la = LinearAlignmentConfig(PRINCIPLE, strength=2.0)
    me = req("me", la, temperature=1.0, top_p=0.95, seed=11, max_tokens=10)
    [alone] = tiny_engine.generate([me])
    others = [req("g", None, max_tokens=3), req("u", la, temperature=0.9, max_tokens=6),
              req("s", None, temperature=1.2, seed=11, max_tokens=12)]
    crowd = tiny_engine.generate([others[0], others[1], replace(me, request_id="me2"), others[2]])
    assert crowd[2].token_ids == alone.token_ids
    [other_seed] = tiny_engine.generate([replace(me, sampling=replace(me.sampling, seed=12))])
    assert other_seed.token_ids != alone.token_ids  # the seed decides (the test can fail)


def test_authors_sampling_mode_greedy_equal_and_sampled_different(tiny_engine: TransformersEngine) -> None:
    base = LinearAlignmentConfig(PRINCIPLE, strength=3.0)
    authors = replace(base, sampling="authors")
    g_req, g_auth = tiny_engine.generate([req("a", base, max_tokens=12), req("b", authors, max_tokens=12)])
    assert g_req.token_ids == g_auth.token_ids
    s_req, s_auth = tiny_engine.generate([req("c", base, temperature=1.5, seed=5, max_tokens=16),
                                          req("d", authors, temperature=1.5, seed=5, max_tokens=16)])
    assert s_req.token_ids != s_auth.token_ids  # same seed, different distributions (T=1.5 vs 0.5)
