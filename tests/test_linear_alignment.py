"""Linear Alignment and sampling math against hand-computed and float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from service.alignment.linear_alignment import (
    LinearAlignmentConfig,
    adaptive_strength,
    combine_logits,
    linear_alignment_step,
    nucleus_mask,
)
from service.alignment.sampling import SamplingParams, apply_top_k, apply_top_p, make_generator, select_token


def test_combine_matches_hand_computation() -> None:
    l_in = torch.tensor([[2.0, 1.0, 0.0]])
    l_out = torch.tensor([[1.0, 1.5, 0.5]])
    # r = 3: l_in + 3 (l_in - l_out) = [2+3, 1-1.5, 0-1.5]
    out = combine_logits(l_in, l_out, torch.tensor([3.0]))
    assert out.tolist() == [[5.0, -0.5, -1.5]]
    # the authors' form l_in*(r+1) - l_out*r is the same thing
    assert torch.allclose(out, l_in * 4 - l_out * 3)


def test_strength_zero_is_the_principle_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    l_in, l_out = torch.randn(4, 50, generator=g), torch.randn(4, 50, generator=g)
    assert torch.equal(combine_logits(l_in, l_out, torch.zeros(4)), l_in)


def test_nucleus_mask_hand_example() -> None:
    # probs ~ [0.5, 0.3, 0.15, 0.05] at T=1: mass before token = [0, .5, .8, .95]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    mask = nucleus_mask(probs.log(), torch.tensor([0.8]), torch.tensor([1.0]))
    assert mask.tolist() == [[True, True, False, False]]
    mask = nucleus_mask(probs.log(), torch.tensor([0.81]), torch.tensor([1.0]))
    assert mask.tolist() == [[True, True, True, False]]
    # the best token is always kept, even with a tiny p
    assert nucleus_mask(probs.log(), torch.tensor([1e-6]), torch.tensor([1.0])).tolist() == [
        [True, False, False, False]]


def test_step_masks_outside_principle_nucleus_and_keeps_rows_independent() -> None:
    l_in = torch.tensor([[3.0, 2.9, -5.0, -5.0], [0.0, 0.0, 0.0, 0.0]])
    l_out = torch.tensor([[3.0, 0.0, 5.0, -5.0], [0.0, 0.0, 0.0, 0.0]])
    cfgs = [LinearAlignmentConfig("p", strength=2.0, plausibility_top_p=0.8, plausibility_temperature=1.0),
            LinearAlignmentConfig("p", strength=0.0, plausibility_top_p=1.0)]
    step = linear_alignment_step(l_in, l_out, cfgs)
    # row 0: token 2 is pushed down (l_out likes it), tokens 2, 3 are outside q's nucleus
    assert torch.isinf(step.logits[0, 2]) and torch.isinf(step.logits[0, 3])
    assert step.logits[0, 1].item() == pytest.approx(2.9 + 2 * 2.9)
    assert step.strength.tolist() == [2.0, 0.0]
    assert torch.equal(step.logits[1], l_in[1])


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    p, q = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    return float((p.exp() * (p - q)).sum())


def test_adaptive_strength_spends_the_kl_budget_float64() -> None:
    g = torch.Generator().manual_seed(1)
    l_in = torch.randn(1, 200, generator=g, dtype=torch.float64) * 2
    l_out = l_in + 0.5 * torch.randn(1, 200, generator=g, dtype=torch.float64)
    eps = 1e-3  # small budget: the second-order approximation is tight
    r = adaptive_strength(l_in, l_out, torch.tensor([eps]), torch.tensor([1e6]))
    # float64 reference for r: sqrt(2 eps / Var_q(d))
    q = torch.softmax(l_in[0], -1)
    d = (l_in - l_out)[0]
    var = float((q * d * d).sum() - (q * d).sum() ** 2)
    assert r.item() == pytest.approx(math.sqrt(2 * eps / var), rel=1e-5)
    aligned = l_in + r.double() * (l_in - l_out)
    assert _kl(l_in, aligned) == pytest.approx(eps, rel=0.05)


def test_adaptive_strength_is_clipped() -> None:
    logits = torch.randn(2, 10)
    r = adaptive_strength(logits, logits.clone(), torch.tensor([0.1, 0.1]), torch.tensor([7.0, 2.0]))
    assert r.tolist() == [7.0, 2.0]  # identical contexts: zero variance -> the cap


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        LinearAlignmentConfig("  ")
    with pytest.raises(ValueError):
        LinearAlignmentConfig("p", strength=-1)
    with pytest.raises(ValueError):
        LinearAlignmentConfig("p", plausibility_top_p=0)


def test_top_k_top_p_and_greedy() -> None:
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    assert torch.isinf(apply_top_k(logits, 2)[[0, 3]]).all()
    assert not torch.isinf(apply_top_k(logits, 2)[[1, 2]]).any()
    kept = ~torch.isinf(apply_top_p(logits, 0.5))
    assert kept.tolist() == [False, True, False, False]
    assert select_token(logits, SamplingParams(temperature=0.0), None) == 1


def test_seeded_sampling_is_reproducible_and_respects_top_k() -> None:
    logits = torch.zeros(100)
    params = SamplingParams(temperature=1.0, top_k=5, seed=7)
    logits[:5] = 1.0
    a = [select_token(logits, params, make_generator(7)) for _ in range(3)]
    gen1, gen2 = make_generator(7), make_generator(7)
    seq1 = [select_token(logits, params, gen1) for _ in range(20)]
    seq2 = [select_token(logits, params, gen2) for _ in range(20)]
    assert seq1 == seq2 and len(set(a)) == 1
    assert all(t < 5 for t in seq1)


def test_tiny_temperature_is_greedy_not_nan() -> None:
    logits = torch.tensor([1.0, 3.0, 2.0, -50.0])
    for t in (1e-300, 1e-8):
        assert select_token(logits, SamplingParams(temperature=t, seed=1), make_generator(1)) == 1
