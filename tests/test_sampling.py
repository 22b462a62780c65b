"""Batched token selection and the shared decoding step, against hand-computed / float64 references."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from service.alignment.decoding import DecodePlan, DecodeRow, decode_step, effective_sampling
from service.alignment.linear_alignment import LinearAlignmentConfig, linear_alignment_step, nucleus_mask
from service.alignment.sampling import (
    SamplingBatch,
    SamplingParams,
    make_generator,
    row_generator,
    sample,
    sampling_probs,
    top_k_mask,
)

GREEDY = SamplingParams()


def batch_of(params: list[SamplingParams]) -> SamplingBatch:
    return SamplingBatch.build(params, [row_generator(p, "cpu") for p in params], "cpu")


def test_greedy_rows_take_the_argmax_and_tiny_temperatures_are_greedy() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, -50.0], [0.0, -1.0, 5.0, 4.9], [1.0, 3.0, 2.0, -50.0]])
    params = [GREEDY, SamplingParams(temperature=1e-8, seed=1), SamplingParams(temperature=1e-300)]
    assert sample(logits, batch_of(params)).tolist() == [1, 2, 1]


def test_top_k_mask_per_row() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 3.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    keep = top_k_mask(logits, torch.tensor([2, 0, 1, 1]), max_k=2)
    assert keep.tolist() == [[False, True, True, False], [True] * 4, [False, True, True, False],  # ties kept
                             [False, True, False, False]]


def _probs_float64(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    x = row.double() / p.temperature
    if p.top_k:
        kth = x.sort(descending=True).values[p.top_k - 1]
        x = x.masked_fill(x < kth, -math.inf)
    probs = torch.softmax(x, -1)
    if p.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = (sorted_p.cumsum(0) - sorted_p) < p.top_p
        keep[0] = True
        mask = torch.zeros_like(keep)
        mask[order] = keep
        x = x.masked_fill(~mask, -math.inf)
        probs = torch.softmax(x, -1)
    return probs


def test_sampling_distribution_per_row_matches_float64() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 300, generator=g) * 3
    params = [SamplingParams(temperature=0.7, top_p=0.9), SamplingParams(temperature=1.3, top_k=20),
              SamplingParams(temperature=1.0, top_k=50, top_p=0.5), SamplingParams(temperature=0.5)]
    b = batch_of(params)
    got = sampling_probs(logits.index_select(0, b.sampled_rows), b.temperature, b.top_k, b.top_p,
                         b.max_top_k, b.any_top_p)
    for j, i in enumerate(b.sampled_rows.tolist()):
        torch.testing.assert_close(got[j].double(), _probs_float64(logits[i], params[i]), atol=1e-6, rtol=1e-5)


def test_exponential_race_draws_the_categorical_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    n = 40_000
    logits = probs.log().expand(n, -1).contiguous()
    torch.manual_seed(0)
    tokens = sample(logits, batch_of([SamplingParams(temperature=1.0)] * n))
    freq = torch.bincount(tokens, minlength=5).double() / n
    assert freq[4] == 0.0  # a zero-probability token is never drawn
    assert torch.allclose(freq, probs.double(), atol=0.01)


def _steps(vocab: int = 1000, steps: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(21)
    return [torch.randn(vocab, generator=g) * 2 for _ in range(steps)]


def _decode_row(rows: list[SamplingParams], target: int) -> list[int]:
    """Tokens of row ``target`` over a few steps, every row with fresh generators from its seed."""
    gens = [row_generator(p, "cpu") for p in rows]
    b = SamplingBatch.build(rows, gens, "cpu")
    out = []
    g = torch.Generator().manual_seed(99)
    for step in _steps():
        logits = torch.randn(len(rows), step.shape[0], generator=g)
        logits[target] = step
        out.append(int(sample(logits, b)[target]))
    return out


def test_seeded_rows_are_reproducible_whatever_the_batch() -> None:
    me = SamplingParams(temperature=1.0, top_p=0.95, top_k=200, seed=7)
    alone = _decode_row([me], 0)
    crowd = [GREEDY, SamplingParams(temperature=0.8), SamplingParams(temperature=1.0, seed=123), me,
             SamplingParams(temperature=2.0, top_p=0.5, seed=7)]
    assert _decode_row(crowd, 3) == alone
    assert _decode_row([SamplingParams(temperature=1.0, seed=5), me], 1) == alone
    assert _decode_row([replace(me, seed=8)], 0) != alone  # the seed matters (the test can fail)


@contextmanager
def no_host_reads() -> Iterator[None]:
    """Any Python-level read of a tensor's value (what would wait for an accelerator) raises."""
    names = ["item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("host read of a device tensor inside a step")

    try:
        for n in names:
            setattr(torch.Tensor, n, boom)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def _mixed_plan() -> tuple[torch.Tensor, list[DecodeRow]]:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(7, 500, generator=g) * torch.tensor([3.0, 3, 0.05, 0.05, 2, 2, 5]).unsqueeze(-1)
    rows = [
        DecodeRow(0, 1, LinearAlignmentConfig("p", strength=2.0), GREEDY, None),
        DecodeRow(2, 3, LinearAlignmentConfig("p", adaptive=True), SamplingParams(temperature=1.0, top_p=0.9), None),
        DecodeRow(4, None, None, SamplingParams(temperature=0.7, top_k=10, seed=3), None),
        DecodeRow(5, 6, LinearAlignmentConfig("p", sampling="authors"), SamplingParams(temperature=1.0, seed=4), None),
        DecodeRow(6, None, None, GREEDY, None),
    ]
    rows = [replace(r, generator=row_generator(effective_sampling(r.la, r.sampling), "cpu")) for r in rows]
    return logits, rows


def test_the_accelerator_path_never_reads_the_device() -> None:
    logits, rows = _mixed_plan()
    plan = DecodePlan.build(rows, "cpu")
    with no_host_reads():
        draw = decode_step(logits, plan, sync_free=True)
    assert draw.tokens.shape == (5,) and draw.strength.shape == (3,)
    flat = torch.zeros(1, 500)  # the top-k holds too little: the host path would look
    with no_host_reads(), pytest.raises(AssertionError, match="host read"):
        nucleus_mask(flat, torch.tensor([0.9]), sync_free=False)


def test_host_and_accelerator_paths_draw_the_same_tokens() -> None:
    logits, rows = _mixed_plan()
    torch.manual_seed(2)  # the unseeded row draws from the default generator
    a = decode_step(logits, DecodePlan.build(rows, "cpu"), sync_free=False)
    _, rows = _mixed_plan()  # fresh generators
    torch.manual_seed(2)
    b = decode_step(logits, DecodePlan.build(rows, "cpu"), sync_free=True)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.strength, b.strength)


def test_greedy_decode_step_equals_the_per_row_reference() -> None:
    logits, rows = _mixed_plan()
    rows = [replace(r, sampling=GREEDY, generator=None) for r in rows]
    draw = decode_step(logits, DecodePlan.build(rows, "cpu"))
    for j, r in enumerate(rows):
        if r.la is None:
            want = int(logits[r.plain_row].argmax())
        else:
            step = linear_alignment_step(logits[[r.principle_row]], logits[[r.plain_row]], [r.la])
            want = int(step.logits[0].argmax())
        assert int(draw.tokens[j]) == want


def test_generators_live_on_the_logits_device() -> None:
    seeded = SamplingParams(temperature=1.0, seed=1)
    assert row_generator(GREEDY, "cpu") is None and row_generator(SamplingParams(temperature=1.0), "cpu") is None
    gen = row_generator(seeded, torch.device("cpu"))
    assert gen is not None and gen.device == torch.device("cpu")
    # a CPU generator cannot fill CUDA noise: refused when the batch is built, with a clear message
    with pytest.raises(ValueError, match="generator on cpu"):
        SamplingBatch.build([seeded], [make_generator(1, "cpu")], "cuda")


# ---- Linear Alignment sampling: the request's settings or the authors' --------------------------------
L_IN = torch.tensor([[2.0, 1.0, 0.0, -2.0]])
L_OUT = torch.tensor([[1.0, 1.0, 1.0, 0.0]])


def _la(sampling: str) -> LinearAlignmentConfig:
    return LinearAlignmentConfig("p", strength=1.0, plausibility_top_p=0.95, plausibility_temperature=0.5,
                                 sampling=sampling)  # type: ignore[arg-type]


def test_authors_sampling_uses_one_temperature_and_no_request_filters() -> None:
    req = SamplingParams(temperature=1.0, top_k=3, top_p=0.9, seed=1)
    assert effective_sampling(_la("request"), req) == req
    assert effective_sampling(_la("authors"), req) == replace(req, temperature=0.5, top_k=0, top_p=1.0)
    assert effective_sampling(_la("authors"), GREEDY) == GREEDY


def test_authors_and_request_sampling_distributions_by_hand() -> None:
    # l = 2 l_in - l_out = [3, 1, -1, -4]; q = softmax(l_in / 0.5) = [.867, .117, .016, .0003]:
    # the 0.95 nucleus is tokens {0, 1}. request (T=1): softmax([3, 1]); authors (T=0.5): softmax([6, 2]).
    aligned = linear_alignment_step(L_IN, L_OUT, [_la("request")]).logits
    assert aligned.tolist() == [[3.0, 1.0, -math.inf, -math.inf]]
    hand = {"request": 1 / (1 + math.exp(-2)), "authors": 1 / (1 + math.exp(-4))}  # P(token 0)
    for mode, p0 in hand.items():
        s = effective_sampling(_la(mode), SamplingParams(temperature=1.0))
        probs = sampling_probs(aligned, torch.tensor([s.temperature]), torch.tensor([s.top_k]),
                               torch.tensor([s.top_p]), s.top_k, s.top_p < 1)
        assert probs[0].tolist() == pytest.approx([p0, 1 - p0, 0.0, 0.0], abs=1e-6)
    # and decode_step draws from them: 4000 identical pairs, frequency of token 1
    n = 4000
    logits = torch.cat([L_OUT, L_IN]).repeat(n, 1)
    for mode, p0 in hand.items():
        rows = [DecodeRow(2 * i, 2 * i + 1, _la(mode), SamplingParams(temperature=1.0), None) for i in range(n)]
        torch.manual_seed(1)
        tokens = decode_step(logits, DecodePlan.build(rows, "cpu")).tokens
        assert set(tokens.tolist()) <= {0, 1}
        assert float((tokens == 1).double().mean()) == pytest.approx(1 - p0, abs=0.012)


def test_greedy_tokens_are_the_same_under_both_sampling_modes() -> None:
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(12, 400, generator=g) * 3
    for temperature in (0.5, 1.0, 2.0):
        tokens = []
        for mode in ("request", "authors"):
            la = replace(_la(mode), plausibility_temperature=temperature, plausibility_top_p=0.9)
            rows = [DecodeRow(2 * i, 2 * i + 1, la, GREEDY, None) for i in range(6)]
            tokens.append(decode_step(logits, DecodePlan.build(rows, "cpu")).tokens)
        assert torch.equal(tokens[0], tokens[1])


def test_profile_la_settings_carry_the_sampling_mode() -> None:
    from pydantic import ValidationError

    from service.domain.profile_spec import LASettings

    assert LASettings().to_config("p").sampling == "request"
    assert LASettings(sampling="authors").to_config("p").sampling == "authors"
    with pytest.raises(ValidationError):
        LASettings(sampling="paper")  # type: ignore[arg-type]
