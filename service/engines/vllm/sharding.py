"""Tensor-parallel arithmetic of the attention heads (pure; no vLLM needed).

vLLM shards attention by heads: rank ``r`` of ``tp`` computes query heads
``[r * H/tp, (r+1) * H/tp)``, and the out-projection (a ``RowParallelLinear`` with
``input_is_parallel=True``) takes exactly those heads' outputs as its input columns, multiplies
them by its shard of ``W_o`` and all-reduces the partial sums. Key/value heads are split the same
way when there are at least ``tp`` of them, else each rank holds one replicated KV head (the one
its query heads read). So a global head ``h`` lives on rank ``h // (H/tp)`` as local head
``h % (H/tp)``; head tables hold only the local columns, and a capture concatenates the ranks'
columns in rank order. An out-projection with ``input_is_parallel=False`` sees every column on
every rank (``parallel=False`` below): its tables are full width and rank 0's capture is the whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _check(num_heads: int, tp_size: int) -> None:
    if tp_size < 1 or num_heads % tp_size:
        raise ValueError(f"{num_heads} attention heads cannot be split over {tp_size} ranks")


def head_owner(head: int, num_heads: int, tp_size: int) -> tuple[int, int]:
    """``(rank, local head)`` holding global query head ``head``."""
    _check(num_heads, tp_size)
    per = num_heads // tp_size
    return head // per, head % per


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> int:
    """KV heads each rank holds: a share when there are at least ``tp`` of them, else one replica."""
    if num_kv_heads >= tp_size:
        if num_kv_heads % tp_size:
            raise ValueError(f"{num_kv_heads} KV heads cannot be split over {tp_size} ranks")
        return num_kv_heads // tp_size
    if tp_size % num_kv_heads:
        raise ValueError(f"{num_kv_heads} KV heads cannot be replicated over {tp_size} ranks")
    return 1


def kv_head_of(rank: int, local: int, num_kv_heads: int, tp_size: int) -> int:
    """The global KV head that rank ``rank`` holds as its local KV head ``local``."""
    per = kv_heads_per_rank(num_kv_heads, tp_size)
    if num_kv_heads >= tp_size:
        return rank * per + local
    return rank * num_kv_heads // tp_size


@dataclass(frozen=True)
class HeadShard:
    """The out-projection input columns one rank sees."""

    rank: int
    tp_size: int
    num_heads: int
    head_dim: int
    parallel: bool = True  # the out-projection's input is split across ranks (``input_is_parallel``)

    def __post_init__(self) -> None:
        _check(self.num_heads, self.tp_size)
        if not 0 <= self.rank < self.tp_size:
            raise ValueError(f"rank {self.rank} outside [0, {self.tp_size})")

    @property
    def local_heads(self) -> int:
        return self.num_heads // self.tp_size if self.parallel else self.num_heads

    @property
    def first_head(self) -> int:
        return self.rank * self.local_heads if self.parallel else 0

    @property
    def width(self) -> int:
        return self.local_heads * self.head_dim

    def local(self, head: int) -> int | None:
        """Local index of global ``head`` on this rank, or None when another rank holds it."""
        if not self.parallel:
            return head
        rank, local = head_owner(head, self.num_heads, self.tp_size)
        return local if rank == self.rank else None


def gather_heads(per_rank: Sequence[torch.Tensor], parallel: bool = True) -> torch.Tensor:
    """Each rank's captured out-projection inputs ``[..., local width]`` -> ``[..., heads * head_dim]``."""
    return torch.cat(list(per_rank), dim=-1) if parallel else per_rank[0]
