"""Helper for test_resume.py (run by torchrun, 2 processes, gloo): DDP gradients of a tiny
DecoderLM on half of a batch per rank, saved by rank 0 to the path given."""
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from framelab.kernels import linear_cross_entropy
from framelab.models import DecoderLM, preset


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DecoderLM(preset("tiny"))
    ids = torch.randint(0, 512, (4, 24), generator=torch.Generator().manual_seed(1))
    mine = ids[2 * rank: 2 * rank + 2]
    ddp = DistributedDataParallel(model)
    hidden = ddp(mine).hidden_states  # forward through DDP so its backward hooks all-reduce
    linear_cross_entropy(hidden[:, :-1], model.output_weight, mine[:, 1:]).backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
