"""Exact, elastic resume: an interrupted run that changes DataLoader workers and world size reads
exactly the samples an uninterrupted run reads, in the same global order: none repeated, none
skipped; every rank gets the same number of batches."""
import pytest

from framelab.datamodules.video_text import VideoTextDataModule
from tests.datamodules.resume_helpers import consume, run_distributed

N = 37  # odd, so world size 2 drops one sample per epoch


@pytest.fixture(scope="module")
def kwargs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    kw = dict(tasks=["describe"], samples={"train": N}, shards=3, cache_dir=str(cache),
              max_frames=4, max_tokens=150, seed=3)
    dm = VideoTextDataModule(**kw)
    dm.prepare_data()
    return kw


def flat(steps):
    return [i for step in steps for i in step]


def test_reference_epoch_is_a_permutation_and_epochs_differ(kwargs):
    ref = consume(kwargs, None, None, epochs=2)
    ids = flat(ref["ids"])
    first, second = ids[:N], ids[N:]
    assert sorted(first) == sorted(second) and len(set(first)) == N and first != second
    assert max(len(s) for s in ref["ids"]) > 1  # packing really put several samples in a row
    assert ref["state"]["epoch"] == 1 and ref["state"]["consumed"] == N
    again = consume({**kwargs, "num_workers": 2}, None, None)
    assert flat(again["ids"]) == first  # worker count does not change the order


def test_resume_single_process_with_other_worker_counts(kwargs):
    ref = flat(consume(kwargs, None, None)["ids"])
    part1 = consume({**kwargs, "num_workers": 2}, None, steps=4)
    part2 = consume({**kwargs, "num_workers": 1}, part1["state"], steps=None)
    assert part1["state"]["consumed"] == len(flat(part1["ids"]))
    assert flat(part1["ids"]) + flat(part2["ids"]) == ref


def rank_slices(results, world, start):
    """Check each rank read its strided slice of the global order from `start`; return the global
    sequence the ranks read together, ordered by global position."""
    per_rank = [flat(r["ids"]) for r in results]
    assert len({len(r["ids"]) for r in results}) == 1  # same number of batches on every rank
    assert len({len(p) for p in per_rank}) == 1
    merged = [None] * (len(per_rank[0]) * world)
    for r, seq in enumerate(per_rank):
        merged[r::world] = seq
    return merged


def test_resume_changes_world_size_and_workers(kwargs, tmp_path):
    ref = flat(consume(kwargs, None, None)["ids"])
    c = consume(kwargs, None, 5)  # world 1 for 5 steps (resumed below on world 2)
    a, d = run_distributed(2, [
        ({**kwargs, "num_workers": 1}, None, 3, 1),        # world 2, one worker each, 3 steps
        ({**kwargs, "num_workers": 2}, c["state"], None, 1),  # world 2, 2 workers each, resumed
    ], tmp_path)
    # world 2 for 3 steps, then world 1 with 2 workers to the end of the epoch
    got_a = rank_slices(a, 2, 0)
    pos = a[0]["state"]["consumed"]
    assert a[0]["state"] == a[1]["state"] and pos == len(got_a)
    b = consume({**kwargs, "num_workers": 2}, a[0]["state"], None)
    assert got_a + flat(b["ids"]) == ref
    # world 1 for 5 steps, then world 2 (2 workers per rank) to the end of the epoch
    got = flat(c["ids"]) + rank_slices(d, 2, c["state"]["consumed"])
    tail = (N - c["state"]["consumed"]) % 2  # fewer samples than ranks left: dropped
    assert got == ref[:N - tail]
    assert d[0]["state"]["consumed"] == d[1]["state"]["consumed"] == N - tail
