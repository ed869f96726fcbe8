"""The agent's training order (framelab.agent.order): PyTorch's shuffled order on one device,
ranks that split each epoch without overlap, and a datamodule that resumes at the next episode
and refuses a position it cannot use."""
import pytest
import torch
from torch.utils.data import DataLoader

from framelab.agent.data import AgentDataModule
from framelab.agent.order import EpisodeOrder, epoch_order
from framelab.errors import UserError


def indices(order: EpisodeOrder) -> list[int]:
    return [index for _, _, index in order]


def test_one_device_order_is_pytorchs_shuffled_dataloader_epoch_by_epoch():
    loader = DataLoader(list(range(11)), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(7))
    order = EpisodeOrder(11, seed=7)
    for epoch in range(3):
        expected = [i for batch in loader for i in batch.tolist()]
        order.set_epoch(epoch)
        assert indices(order) == expected == epoch_order(11, 7, epoch)
    assert epoch_order(11, 7, 0) != epoch_order(11, 7, 1)


def test_ranks_split_an_epoch_in_whole_rounds_and_count_places_taken():
    ranks = [EpisodeOrder(11, seed=3, rank=r, world=3) for r in range(3)]
    taken = [list(o) for o in ranks]
    assert [len(t) for t in taken] == [len(o) for o in ranks] == [3, 3, 3]
    assert [i for _, _, i in taken[0]] == epoch_order(11, 3, 0)[0:9:3]
    assert sorted(i for t in taken for _, _, i in t) == sorted(epoch_order(11, 3, 0)[:9])
    assert [p for _, p, _ in taken[0]] == [p for _, p, _ in taken[2]] == [3, 6, 9]


def test_a_resumed_order_goes_on_at_the_next_place_or_the_next_epoch():
    whole = epoch_order(12, 5, 1)
    one = EpisodeOrder(12, seed=5)
    one.resume(1, 5)                        # sets the epoch: no set_epoch before the first indices
    assert indices(one) == whole[5:] and len(one) == 12      # the length is a whole epoch's
    two = [EpisodeOrder(12, seed=5, rank=r, world=2) for r in range(2)]
    for o in two:
        o.resume(1, 6)
    assert sorted(indices(two[0]) + indices(two[1])) == sorted(whole[6:])
    done = EpisodeOrder(12, seed=5)
    done.resume(0, 12)                      # saved at an epoch's last batch: the next epoch
    assert done.epoch == 1 and indices(done) == whole
    odd = EpisodeOrder(11, seed=5, rank=1, world=2)
    odd.resume(0, 10)                       # no whole round of two left
    assert odd.epoch == 1 and len(indices(odd)) == 5
    stale = EpisodeOrder(12, seed=5)
    stale.resume(1, 6)
    stale.set_epoch(2)                      # a position of an epoch that is over: a fresh epoch
    assert indices(stale) == epoch_order(12, 5, 2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("agent_order_cache"))


def datamodule(cache: str, seed: int = 0) -> AgentDataModule:
    return AgentDataModule(lengths=[64], samples={"train": 10, "val": 2}, batch_size=3,
                           cache_dir=cache, seed=seed)


def test_the_datamodule_resumes_at_the_next_episode_and_refuses_another_seed(cache):
    first = datamodule(cache)
    batches = []
    for batch in first.train_dataloader():
        handed = first.on_before_batch_transfer(batch, 0)
        assert "_position" not in handed
        batches.append(handed["input_ids"])
        if len(batches) == 2:
            state = first.state_dict()
    assert state == {"epoch": 0, "taken": 6, "seed": 0, "train": 10, "world": 1,
                     "batch_size": 3} and len(batches) == 4
    resumed = datamodule(cache)
    resumed.load_state_dict(state)
    rest = [resumed.on_before_batch_transfer(b, 0)["input_ids"] for b in resumed.train_dataloader()]
    assert len(rest) == 2 and all(torch.equal(a, b) for a, b in zip(rest, batches[2:]))
    assert resumed.state_dict() == {**state, "taken": 10}
    assert datamodule(cache).state_dict() == {}               # nothing taken: nothing to keep
    with pytest.raises(UserError, match="data.seed=0, not 1"):
        datamodule(cache, seed=1).load_state_dict(state)
    other = AgentDataModule(lengths=[64], samples={"train": 12}, cache_dir=cache)
    with pytest.raises(UserError, match="data.samples.train=10, not 12"):
        other.load_state_dict(state)
    other = AgentDataModule(lengths=[64], samples={"train": 10}, batch_size=4, cache_dir=cache)
    with pytest.raises(UserError, match="batches of 3 on 1 rank.*this one 4 on 1"):
        other.load_state_dict(state)
    for bad in ({"epoch": 0}, {**state, "taken": "six"}, {**state, "seed": None},
                {**state, "taken": -1}, {**state, "taken": 11}, {**state, "epoch": float("inf")},
                [1, 2], torch.zeros(3)):
        with pytest.raises(UserError, match="is not one AgentDataModule writes"):
            datamodule(cache).load_state_dict(bad)
