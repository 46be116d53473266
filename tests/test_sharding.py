"""Multi-GPU sharding arithmetic, on CPU with simulated world sizes (issue 19).

Every rank must get the same number of micro-batches, and at least one, or the ranks
disagree on how many gradient all-reduces an epoch has and the run hangs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunewise.task import LoraSpec
from tunewise.training.features import Feature, length_batches, shard_batches


@given(st.integers(1, 40), st.integers(1, 9))
def test_every_rank_gets_the_same_number_of_batches_and_all_are_covered(n: int, world: int
                                                                         ) -> None:
    batches = [[i] for i in range(n)]
    shards = [shard_batches(batches, world, rank) for rank in range(world)]
    counts = {len(s) for s in shards}
    assert counts == {math.ceil(n / world)} and min(counts) >= 1
    seen = [b[0] for s in shards for b in s]
    assert set(seen) == set(range(n))  # nothing dropped
    assert len(seen) - n == math.ceil(n / world) * world - n < world  # few repeats


def test_fewer_batches_than_ranks_still_gives_each_rank_one() -> None:
    batches = [[0, 1], [2, 3], [4]]
    shards = [shard_batches(batches, 8, r) for r in range(8)]
    assert all(len(s) == 1 for s in shards)
    assert shards[0] == shards[3] == [[0, 1]] and shards[2] == [[4]] and shards[7] == [[2, 3]]


def test_one_process_keeps_every_batch_in_order() -> None:
    batches = length_batches([5, 9, 3, 7, 2, 8, 6], 2, seed=0)
    assert shard_batches(batches, 1, 0) == batches
    assert shard_batches([], 4, 2) == []


@pytest.mark.parametrize(("n_examples", "batch", "world"), [(3, 8, 2), (10, 4, 4), (50, 8, 3)])
def test_trainer_epoch_batches_with_a_simulated_world(n_examples: int, batch: int,
                                                      world: int) -> None:
    """The trainer's own per-rank layout, with accelerate's world size and rank faked."""
    from tunewise.training.lora import LoraTrainer

    feats = [Feature([1] * (5 + i % 7), [-100] * 4 + [1] * (1 + i % 7)) for i in range(n_examples)]
    spec = LoraSpec(batch_size=batch)
    per_rank = []
    for rank in range(world):
        t = LoraTrainer("unused", spec, feats, [], Path("unused"), 0, progress=False)
        t.world, t.rank = world, rank
        t.lengths = [len(f.input_ids) for f in feats]
        per_rank.append(t._epoch_batches(0))
    n_batches = math.ceil(n_examples / batch)
    assert {len(b) for b in per_rank} == {math.ceil(n_batches / world)}
    covered = {i for b in per_rank for mb in b for i in mb}
    assert covered == set(range(n_examples))
