"""Lock-step bookkeeping for Linear-Alignment pairs (pure; no vLLM import).

An LA request is two vLLM sequences, ``plain`` and ``principle``. A step *samples* a sequence when
its scheduled tokens reach its last known position (its final prefill chunk, or a decode). A token
is committed to a pair only from a step that samples *both* members: only then does the logits
processor see both rows and force the same aligned token on them.

``plan_step`` (before vLLM's ``schedule``) keeps a member out of a step where it could only sample
alone (a member one token from sampling whose partner will not sample now) and puts partners next
to each other, so the token budget reaches both. Whatever vLLM then schedules, ``lone_steps``
(after ``schedule``) names the members that sample without their partner; ``PairGate`` discards
their token when the step's output arrives, rolls their computed-token count back by one, and keeps
them out of the very next ``schedule`` call. That last rule is what makes this safe under async
scheduling: there the model runner feeds a sequence's sampled token into its next step on the
device, but only if the sequence is in that next step; a sequence left out of a step is dropped
from the runner's persistent batch and re-added later from the scheduler's own token list, so a
discarded token is never fed to anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

EXTRA_KEY = "alignserve"
ROLES = ("plain", "principle")


@dataclass
class PairBook:
    """Which vLLM request ids form which pair (filled as requests arrive)."""

    members: dict[str, dict[str, str]] = field(default_factory=dict)  # pair -> role -> req id
    pair_of: dict[str, str] = field(default_factory=dict)  # req id -> pair
    vetoes: int = 0

    def add(self, req_id: str, pair: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown pair role {role!r}")
        self.members.setdefault(pair, {})[role] = req_id
        self.pair_of[req_id] = pair

    def partner(self, req_id: str) -> str | None:
        pair = self.pair_of.get(req_id)
        if pair is None:
            return None
        for rid in self.members[pair].values():
            if rid != req_id:
                return rid
        return None

    def drop(self, req_id: str) -> None:
        pair = self.pair_of.pop(req_id, None)
        if pair is None:
            return
        roles = self.members.get(pair, {})
        for role, rid in list(roles.items()):
            if rid == req_id:
                del roles[role]
        if not roles:
            self.members.pop(pair, None)


def pair_tag(extra_args: Mapping[str, object] | None) -> tuple[str, str] | None:
    """``(pair, role)`` from a request's ``SamplingParams.extra_args``, or None."""
    if not extra_args:
        return None
    tag = extra_args.get(EXTRA_KEY)
    if not isinstance(tag, Mapping) or "pair" not in tag:
        return None
    return str(tag["pair"]), str(tag["role"])


def vetoes(book: PairBook, sampled: Mapping[str, list[int]]) -> set[str]:
    """Request ids whose sampled tokens this step must be discarded.

    ``sampled`` maps every request scheduled this step to the tokens it produced (empty for a
    partial prefill). A paired member keeps its token only if its partner produced the very same
    token in the same step.
    """
    out: set[str] = set()
    for rid, toks in sampled.items():
        if not toks or rid not in book.pair_of:
            continue
        mate = book.partner(rid)
        if mate is None or sampled.get(mate) != toks:
            out.add(rid)
    return out


def sample_mismatches(book: PairBook, sampled: Mapping[str, list[int]]) -> set[str]:
    """Members of pairs that both sampled this step but got different tokens (never expected: the
    logits processor forces one token on both rows)."""
    out: set[str] = set()
    for rid, toks in sampled.items():
        mate = book.partner(rid)
        if toks and mate is not None and sampled.get(mate) and sampled[mate] != toks:
            out.add(rid)
    return out


class Row(NamedTuple):  # a tuple: one is built per running request per step
    """A running request before a step, as vLLM's running loop will see it."""

    req_id: str
    want: int  # tokens vLLM schedules for it given enough budget (0: it is skipped this step)
    samples: bool  # scheduling all of ``want`` reaches its last known position (it samples)


@dataclass(frozen=True)
class StepPlan:
    order: list[str]  # running requests shown to vLLM's schedule, in this order (partners adjacent)
    held: set[str]  # running requests kept out of this step
    stranded: set[str] = field(default_factory=set)  # held, ready, and the partner is not running (waiting)


def plan_step(book: PairBook, rows: Sequence[Row], budget: int, forced: Iterable[str] = ()) -> StepPlan:
    """Which running requests vLLM's ``schedule`` sees this step, and in what order.

    ``forced`` members are held whatever else happens (``PairGate``). A pair is shown together, its
    second member moved next to its first. If both would sample within the token budget, both are
    shown; otherwise a member that can only sample (``want`` 1 and ``samples``: a decode or its
    last prompt token) is held — running alone it would sample without its partner, a token that
    would be discarded — while a member still prefilling is shown and progresses. This is a
    prediction (vLLM may still preempt or run out of KV blocks); correctness does not rest on it,
    ``lone_steps`` checks what was actually scheduled.
    """
    force = set(forced)
    if not force and sum(r.want for r in rows) <= budget:
        return _plan_unbounded(book, rows)
    by_id = {r.req_id: r for r in rows}
    order: list[str] = []
    held: set[str] = set()
    stranded: set[str] = set()
    placed: set[str] = set()

    def show(row: Row) -> None:
        nonlocal budget
        order.append(row.req_id)
        budget -= min(row.want, max(budget, 0))

    for row in rows:
        if row.req_id in placed:
            continue
        placed.add(row.req_id)
        if row.req_id not in book.pair_of:
            show(row)
            continue
        mate_id = book.partner(row.req_id)
        mate = by_id.get(mate_id) if mate_id is not None else None
        group = [row]
        if mate is not None and mate.req_id not in placed:
            placed.add(mate.req_id)
            group.append(mate)
        live = [m for m in group if m.req_id not in force]
        held.update(m.req_id for m in group if m.req_id in force)
        together = (len(live) == 2 and all(m.samples and m.want > 0 for m in live)
                    and live[0].want + live[1].want <= budget)
        for m in live:
            if together or not (m.samples and m.want == 1):
                show(m)
            else:
                held.add(m.req_id)
                if len(group) == 1 and mate_id is not None:
                    stranded.add(m.req_id)
    return StepPlan(order, held, stranded)


def _plan_unbounded(book: PairBook, rows: Sequence[Row]) -> StepPlan:
    """``plan_step`` when every request gets all it wants (the common decode step): order does not
    matter, a member is held only if it can only sample and its partner will not sample."""
    sampling = {r.req_id for r in rows if r.samples and r.want > 0}
    running: set[str] | None = None
    held: set[str] = set()
    stranded: set[str] = set()
    for r in rows:
        if r.want == 1 and r.samples and r.req_id in book.pair_of:
            mate = book.partner(r.req_id)
            if mate not in sampling:
                held.add(r.req_id)
                if running is None:
                    running = {x.req_id for x in rows}
                if mate is not None and mate not in running:
                    stranded.add(r.req_id)
    if not held:
        return StepPlan([r.req_id for r in rows], held, stranded)
    return StepPlan([r.req_id for r in rows if r.req_id not in held], held, stranded)


def lone_steps(book: PairBook, sampling: Mapping[str, bool]) -> set[str]:
    """Paired requests that a scheduled step samples while their partner's step does not.

    ``sampling``: every paired request scheduled this step -> whether the step samples it (False
    for a partial prefill chunk). A member without a live partner (not arrived yet, or finished or
    aborted) never samples together with one, so it is lone too."""
    out: set[str] = set()
    for rid, samples in sampling.items():
        if not samples or rid not in book.pair_of:
            continue
        mate = book.partner(rid)
        if mate is None or not sampling.get(mate, False):
            out.add(rid)
    return out


@dataclass
class Veto:
    req_id: str
    preemptions: int  # the request's preemption count when its step was scheduled


@dataclass
class PairGate:
    """Steps whose token is to be discarded, and who must sit out the next ``schedule`` call.

    ``vetoed(step, ids)`` right after a step is scheduled; ``resolve(step)`` when its output
    arrives (then the caller discards the tokens and rolls the counts back); ``forced()`` before
    each ``schedule``; ``scheduled(ids)`` after it. A vetoed request is forced out until (1) its
    step's output has been resolved and (2) one ``schedule`` call has passed without it.
    """

    sit_out: set[str] = field(default_factory=set)
    unresolved: Counter[str] = field(default_factory=Counter)
    pending: dict[int, list[Veto]] = field(default_factory=dict)
    stalls: Counter[str] = field(default_factory=Counter)
    patience: int = 8  # schedule calls a stranded member waits before it gives its KV cache back

    def stranded(self, ids: set[str]) -> set[str]:
        """Members held because their partner waits outside the running set (preempted, or not
        admitted for lack of KV cache). Each holds KV blocks while it cannot progress; if all of
        the cache is held that way nothing can be admitted any more. After ``patience`` calls in a
        row such a member is returned, to be preempted and queued right behind its partner, so the
        pair is admitted again together."""
        for rid in list(self.stalls):
            if rid not in ids:
                del self.stalls[rid]
        out: set[str] = set()
        for rid in ids:
            self.stalls[rid] += 1
            if self.stalls[rid] >= self.patience:
                out.add(rid)
                del self.stalls[rid]
        return out

    def forced(self) -> set[str]:
        return self.sit_out | {rid for rid, n in self.unresolved.items() if n > 0}

    def scheduled(self, ids: Iterable[str]) -> None:
        """A ``schedule`` call produced a step with exactly ``ids``: whoever sat it out has done so."""
        if self.sit_out:
            self.sit_out &= set(ids)

    def vetoed(self, step: int, vetoes: Sequence[Veto]) -> None:
        if not vetoes:
            return
        self.pending.setdefault(step, []).extend(vetoes)
        for v in vetoes:
            self.unresolved[v.req_id] += 1
            self.sit_out.add(v.req_id)

    def resolve(self, step: int) -> list[Veto]:
        out = self.pending.pop(step, [])
        for v in out:
            self.unresolved[v.req_id] -= 1
            if self.unresolved[v.req_id] <= 0:
                del self.unresolved[v.req_id]
        return out

    def drop(self, req_id: str) -> None:
        self.sit_out.discard(req_id)
        self.unresolved.pop(req_id, None)
        self.stalls.pop(req_id, None)
