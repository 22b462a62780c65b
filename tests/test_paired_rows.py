"""The vLLM logits processor's pure core (``engines/vllm/la_batch``), without vLLM: which rows pair
up, incomplete pairs vetoed, per-row tensors rebuilt only when the batch changes."""

from __future__ import annotations

import torch

from service.alignment.decoding import DecodePlan, DecodeRow, decode_step
from service.alignment.linear_alignment import LinearAlignmentConfig, linear_alignment_step
from service.alignment.sampling import SamplingParams, row_generator
from service.engines.vllm.la_batch import VETO_TOKEN, PairedRow, PairedRows, pair_layout
from service.engines.vllm.pairing import PairBook, vetoes

LA = LinearAlignmentConfig("p", strength=4.0, plausibility_top_p=0.99, plausibility_temperature=1.0)
GREEDY = SamplingParams()


def rows_for(pair: str, sampling: SamplingParams = GREEDY) -> tuple[PairedRow, PairedRow]:
    gen = row_generator(sampling, "cpu")
    return PairedRow(pair, "plain", None, sampling), PairedRow(pair, "principle", LA, sampling, gen)


def test_pair_layout_vetoes_every_row_that_cannot_be_aligned() -> None:
    roles = {0: ("A", "plain"), 1: ("A", "principle"), 2: ("B", "plain"), 7: ("B", "principle"),
             4: ("C", "principle"), 5: ("D", "plain"), 6: ("D", "principle")}
    layout = pair_layout(roles, batch=7)
    assert layout.pairs == [(0, 1), (5, 6)]
    assert sorted(layout.vetoed) == [(2, VETO_TOKEN["plain"]), (4, VETO_TOKEN["principle"])]
    assert VETO_TOKEN["plain"] != VETO_TOKEN["principle"]


def _logits() -> torch.Tensor:
    """Pair A (rows 0 plain, 1 principle) agrees on token 5 before alignment; aligned, it picks 3.
    Pair B: plain at row 2, principle at row 7 — beyond this step's 5 rows. Rows 3, 4 unpaired."""
    logits = torch.full((5, 8), -2.0)
    logits[0, 5], logits[0, 3] = 4.0, 0.0  # l_out: likes 5, not 3
    logits[1, 5], logits[1, 3] = 3.0, 2.8  # l_in: 5 first, 3 close -> l_in + 4 (l_in - l_out) picks 3
    logits[2, 6] = 5.0  # B's plain row, left alone its argmax is 6
    logits[3, 2], logits[4, 7] = 1.0, 1.0
    return logits


def test_incomplete_pair_is_vetoed_and_complete_pairs_are_aligned() -> None:
    state = PairedRows("cpu")
    a_plain, a_princ = rows_for("A")
    b_plain, b_princ = rows_for("B")
    state.update([], [(0, a_plain), (1, a_princ), (2, b_plain), (7, b_princ), (3, None)], [])
    logits = _logits()
    raw = logits.clone()
    out = state.apply(logits)
    tokens = out.argmax(-1).tolist()  # vLLM's sampler is greedy for paired rows
    aligned = int(linear_alignment_step(raw[[1]], raw[[0]], [LA]).logits.argmax())
    assert aligned == 3 and int(raw[0].argmax()) == int(raw[1].argmax()) == 5
    assert tokens[0] == tokens[1] == aligned
    assert torch.equal(out[3:], raw[3:])  # unpaired rows untouched
    # the scheduler's view: only what both members of a pair produced is committed
    book = PairBook()
    for rid, pair, role in [("a-b", "A", "plain"), ("a-p", "A", "principle"),
                            ("b-b", "B", "plain"), ("b-p", "B", "principle")]:
        book.add(rid, pair, role)
    sampled = {"a-b": [tokens[0]], "a-p": [tokens[1]], "b-b": [tokens[2]]}  # b-p is not in this step
    assert vetoes(book, sampled) == {"b-b"}
    # even if B's principle row did sample its own argmax (a stale row map), the pair disagrees
    assert vetoes(book, {**sampled, "b-p": [int(raw[2].argmax())]}) == {"b-b", "b-p"}
    assert tokens[2] == VETO_TOKEN["plain"]


def test_step_tensors_are_built_once_per_batch_change() -> None:
    state = PairedRows("cpu")
    a_plain, a_princ = rows_for("A")
    state.update([], [(0, a_plain), (1, a_princ)], [])
    for _ in range(3):
        state.apply(_logits())
    assert state.builds == 1
    state.update([], [], [])  # an update that changes nothing
    state.apply(_logits())
    assert state.builds == 1
    state.update([], [], [(0, 1, True)])  # swap: plain now at 1, principle at 0
    assert state.rows[1].role == "plain" and state.rows[0].role == "principle"
    swapped = _logits()[[1, 0, 2, 3, 4]]
    tokens = state.apply(swapped).argmax(-1).tolist()
    assert state.builds == 2 and tokens[0] == tokens[1] == 3
    state.update([], [], [(1, 4, False)])  # plain moves to 4
    assert set(state.rows) == {0, 4}
    state.update([0], [], [])
    assert set(state.rows) == {4}
    out = state.apply(_logits())  # the lone plain row is forced to its veto token
    assert int(out[4].argmax()) == VETO_TOKEN["plain"]


def test_sampled_pair_draws_what_the_shared_step_draws() -> None:
    sampling = SamplingParams(temperature=1.0, top_p=0.9, seed=17)
    state = PairedRows("cpu")
    plain, princ = rows_for("A", sampling)
    state.update([], [(0, plain), (1, princ)], [])
    g = torch.Generator().manual_seed(2)
    steps = [torch.randn(2, 300, generator=g) * 2 for _ in range(6)]
    got = [int(state.apply(s.clone())[0].argmax()) for s in steps]
    plan = DecodePlan.build([DecodeRow(0, 1, LA, sampling, row_generator(sampling, "cpu"))], "cpu")
    want = [int(decode_step(s, plan).tokens[0]) for s in steps]
    assert got == want and len(set(got)) > 1


def test_generator_book_keeps_a_pairs_generator_across_re_admission() -> None:
    from service.engines.vllm.la_batch import GeneratorBook

    book = GeneratorBook(capacity=2)
    made: list[str] = []

    def make(seed: int) -> torch.Generator:
        made.append(str(seed))
        return torch.Generator().manual_seed(seed)

    g = book.get("p1", lambda: make(5))
    first = torch.rand(3, generator=g)
    again = book.get("p1", lambda: make(5))  # the row left the batch and came back
    assert again is g and made == ["5"]
    fresh = torch.Generator().manual_seed(5)
    torch.rand(3, generator=fresh)
    assert torch.equal(torch.rand(3, generator=again), torch.rand(3, generator=fresh))  # continues, no replay
    assert not torch.equal(first, torch.rand(3, generator=torch.Generator().manual_seed(6)))
    assert book.get("greedy", lambda: None) is None and len(book) == 1  # unseeded rows keep nothing
    book.get("p2", lambda: make(7))
    book.get("p1", lambda: make(5))  # p1 most recent now
    book.get("p3", lambda: make(8))  # evicts p2, the least recently used
    assert len(book) == 2 and made == ["5", "7", "8"]
    book.get("p2", lambda: make(7))
    assert made[-1] == "7"
