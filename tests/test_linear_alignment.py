"""Linear Alignment and sampling math against hand-computed and float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from service.alignment.linear_alignment import (
    AlignmentBatch,
    LinearAlignmentConfig,
    adaptive_strength,
    combine_logits,
    linear_alignment_step,
    nucleus_mask,
)


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


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("fast_k", [1, 2, 64])
def test_nucleus_mask_hand_example(sync_free: bool, fast_k: int) -> None:
    # probs ~ [0.5, 0.3, 0.15, 0.05] at T=1: mass before token = [0, .5, .8, .95]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])

    def mask(p: float) -> list[list[bool]]:
        return nucleus_mask(probs.log(), torch.tensor([p]), torch.tensor([1.0]), fast_k, sync_free).tolist()

    assert mask(0.8) == [[True, True, False, False]]
    assert mask(0.81) == [[True, True, True, False]]
    assert mask(1e-6) == [[True, False, False, False]]  # the best token is always kept
    assert mask(1.0) == [[True, True, True, True]]  # p = 1: no constraint at all
    # ... even where float32 mass reaches 1.0 before the tail (mass before 1.0 is not < 1)
    tail = torch.tensor([[0.0, -30.0, -30.0, -40.0]])
    assert nucleus_mask(tail, torch.tensor([1.0]), None, fast_k, sync_free).all()


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


def test_step_settings_built_once_equal_settings_from_configs() -> None:
    g = torch.Generator().manual_seed(5)
    l_in, l_out = torch.randn(3, 40, generator=g) * 3, torch.randn(3, 40, generator=g) * 3
    cfgs = [LinearAlignmentConfig("p", strength=1.5), LinearAlignmentConfig("p", adaptive=True, kl_budget=0.2),
            LinearAlignmentConfig("p", strength=0.0, plausibility_top_p=0.5, plausibility_temperature=1.0)]
    built = AlignmentBatch.build(cfgs, "cpu")
    a, b = linear_alignment_step(l_in, l_out, cfgs), linear_alignment_step(l_in, l_out, built)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.strength, b.strength)
    c = linear_alignment_step(l_in, l_out, built, sync_free=True)
    assert torch.equal(a.logits, c.logits)
    with pytest.raises(ValueError):
        linear_alignment_step(l_in[:2], l_out[:2], built)


@pytest.mark.parametrize("sync_free", [False, True])
def test_row_without_finite_aligned_logit_falls_back_to_q_nucleus(sync_free: bool) -> None:
    l_in = torch.tensor([[2.0, 1.0, 0.0, -3.0], [2.0, 1.0, 0.0, -3.0], [1.0, 0.5, float("-inf"), 0.0]])
    inf = float("inf")
    # row 0: l_out = +inf on the whole nucleus -> every aligned logit is -inf
    # row 2: l_in = l_out = -inf at token 2 -> NaN (-inf - -inf) inside a p = 1 nucleus
    l_out = torch.tensor([[inf, inf, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, float("-inf"), 0.0]])
    cfgs = [LinearAlignmentConfig("p", strength=1.0, plausibility_temperature=1.0, plausibility_top_p=0.7),
            LinearAlignmentConfig("p", strength=1.0, plausibility_temperature=1.0, plausibility_top_p=0.7),
            LinearAlignmentConfig("p", strength=1.0, plausibility_top_p=1.0)]
    out = linear_alignment_step(l_in, l_out, cfgs, sync_free=sync_free).logits
    ninf = float("-inf")
    # softmax([2, 1, 0, -3]) = [.66, .24, .09, .004]: the p = 0.7 nucleus is tokens 0, 1
    assert out[0].tolist() == [2.0, 1.0, ninf, ninf]  # q's nucleus
    assert out[1].tolist() == [4.0, 2.0, ninf, ninf]  # ordinary row untouched by the fallback
    assert out[2].tolist() == [1.0, 0.5, ninf, 0.0]
    assert not torch.isnan(out).any()


def _nucleus_float64(logits: torch.Tensor, top_p: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Reference: full descending sort in float64, keep while the mass before is below p."""
    probs = torch.softmax(logits.double() / temperature.double().unsqueeze(-1), dim=-1)
    out = torch.zeros(probs.shape, dtype=torch.bool)
    for i in range(probs.shape[0]):
        sorted_p, order = probs[i].sort(descending=True)
        before = sorted_p.cumsum(0) - sorted_p
        keep = (before < float(top_p[i])) | (float(top_p[i]) >= 1.0)
        keep[0] = True
        out[i, order] = keep
    return out


def _near_boundary(logits: torch.Tensor, top_p: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Rows where float32 rounding could legitimately flip a token (mass before within 1e-6 of p)."""
    probs = torch.softmax(logits.double() / temperature.double().unsqueeze(-1), dim=-1)
    sorted_p = probs.sort(dim=-1, descending=True).values
    before = sorted_p.cumsum(-1) - sorted_p
    return ((before - top_p.double().unsqueeze(-1)).abs() < 1e-6).any(-1)


@pytest.mark.parametrize("sync_free", [False, True])
def test_nucleus_mask_equals_float64_full_sort(sync_free: bool) -> None:
    g = torch.Generator().manual_seed(11)
    scales = torch.tensor([0.01, 0.1, 0.5, 1, 2, 3, 5, 8, 20, 0.05, 1.5, 4])
    rows = len(scales)
    logits = torch.randn(rows, 3000, generator=g) * scales.unsqueeze(-1)
    top_p = torch.tensor([0.8, 0.9, 0.5, 0.95, 0.8, 0.3, 0.99, 0.8, 0.6, 1.0, 0.7, 0.85])
    temperature = torch.tensor([0.5, 1.0, 0.7, 1.0, 0.5, 2.0, 1.0, 0.5, 1.0, 1.0, 0.3, 1.0])
    fast_k = 32
    got = nucleus_mask(logits, top_p, temperature, fast_k=fast_k, sync_free=sync_free)
    want = _nucleus_float64(logits, top_p, temperature)
    ok = ~_near_boundary(logits, top_p, temperature)
    assert bool(ok.all())  # this seed has no row where float32 rounding may decide
    assert torch.equal(got[ok], want[ok])
    # the data has rows the top-k covers and rows it does not (those need the full sort)
    probs = torch.softmax(logits.double() / temperature.double().unsqueeze(-1), -1)
    covered = probs.topk(fast_k, -1).values.sum(-1) >= top_p.double()
    assert bool(covered.any()) and bool((~covered & (top_p < 1)).any())
    assert int(want[~covered].sum(-1).min()) > fast_k


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        LinearAlignmentConfig("  ")
    with pytest.raises(ValueError):
        LinearAlignmentConfig("p", strength=-1)
    with pytest.raises(ValueError):
        LinearAlignmentConfig("p", plausibility_top_p=0)
    with pytest.raises(ValueError):
        LinearAlignmentConfig("p", sampling="paper")  # type: ignore[arg-type]
