"""The training order of agent episodes, and where a run stands in it (so that a resumed run
goes on with the next episodes instead of starting its epoch over).

Epoch e is a permutation of the episode indices drawn from one torch generator seeded with
`data.seed`: per epoch, one 64-bit draw, the permutation, and a second permutation left unused.
That is what PyTorch's shuffled DataLoader draws from a generator it is given (its workers' base
seed, then `RandomSampler`'s permutations), so on one device the order is the one a
`DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))` gives, epoch by epoch
(tests/agent/test_order.py holds it to that).

With several ranks, rank r takes places r, r + world, r + 2 world, ... of the epoch's order, in
whole rounds (an epoch's last places that would leave a rank without its share are dropped, so
every rank runs the same number of batches). The sampler is a `DistributedSampler`, so Lightning
leaves that split to it instead of wrapping it in its own (which would shuffle the order again).
Each index it yields comes with the number of places all ranks have taken once this one is taken;
the batch carries the largest, and the datamodule keeps it as its position
(`AgentDataModule.state_dict`). A run resumed from a checkpoint starts at that place
(`EpisodeOrder.resume`), with the same number of ranks and the same batch size: Lightning counts
the batches of the epoch it restores as they were, and ends the epoch at the loader's length.
"""
from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """Epoch `epoch`'s permutation of range(size) (see the module docstring)."""
    g = torch.Generator().manual_seed(int(seed))
    order = None
    for _ in range(epoch + 1):
        torch.empty((), dtype=torch.int64).random_(generator=g)
        order = torch.randperm(size, generator=g).tolist()
        torch.randperm(size, generator=g)
    return order


class EpisodeOrder(DistributedSampler):
    """Yields (epoch, places taken by all ranks after this one, episode index) for this rank."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        super().__init__(range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.size = size
        self.resume_at: tuple[int, int] | None = None     # (epoch, places taken) from a checkpoint

    def resume(self, epoch: int, taken: int) -> None:
        """Start at a saved position: the place after `taken` in `epoch`, or the next epoch's
        first place when no whole round of `epoch` is left. The epoch is set here, not left to
        Lightning's `set_epoch`: a loader with workers draws its first indices as soon as it is
        iterated, which Lightning does before it sets the epoch of the run it resumes."""
        if self.size - taken < self.num_replicas:
            epoch, taken = epoch + 1, 0
        self.epoch, self.resume_at = epoch, (epoch, taken)

    def _start(self) -> int:
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            return min(self.resume_at[1], self.size)
        return 0

    def __len__(self) -> int:
        """A whole epoch's share of this rank, also for the epoch a resumed run finishes: Lightning
        counts the batches it restored with the loader's length, and ends an epoch there."""
        return self.size // self.num_replicas

    def __iter__(self):
        epoch, start = self.epoch, self._start()
        order = epoch_order(self.size, self.seed, epoch)
        world = self.num_replicas
        stop = start + (self.size - start) // world * world
        for place in range(start + self.rank, stop, world):
            yield epoch, place - self.rank + world, order[place]
        if self.epoch == epoch:             # a plain loop (no set_epoch) goes on with the next epoch
            self.epoch, self.resume_at = epoch + 1, None
