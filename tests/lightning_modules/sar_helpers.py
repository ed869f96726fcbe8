"""A tiny in-memory class-conditional token datamodule for SAR tests: each class owns a fixed
random 4x4 grid and samples copy it with a few tokens replaced, so a model can learn it fast."""
import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

TINY_MODEL = {"hidden": 32, "enc_layers": 1, "dec_layers": 1, "heads": 2, "kv_heads": 2,
              "head_dim": 16, "intermediate": 64}


class _Grids(Dataset):
    def __init__(self, protos, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, len(protos), (n,), generator=g)
        self.tokens = protos[self.labels].clone()
        noise = torch.rand(self.tokens.shape, generator=g) < 0.1
        self.tokens[noise] = torch.randint(0, protos.max() + 1, (int(noise.sum()),), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"tokens": self.tokens[i], "labels": self.labels[i], "sample_ids": i}


class TinyGrids(L.LightningDataModule):
    codebook_size, grid, num_classes = 16, (4, 4), 4

    def __init__(self, batch_size: int = 16, train_size: int = 512):
        super().__init__()
        self.batch_size, self.train_size = batch_size, train_size
        self.protos = torch.randint(0, self.codebook_size, (self.num_classes, 16),
                                    generator=torch.Generator().manual_seed(123))

    def train_dataloader(self):
        return DataLoader(_Grids(self.protos, self.train_size, 0), self.batch_size, shuffle=False)

    def val_dataloader(self):
        return DataLoader(_Grids(self.protos, 32, 1), self.batch_size)

    def decode(self, tokens):
        """Tokens -> grey images (B, 3, 4, 4) in [0, 1]."""
        x = tokens.float().div(self.codebook_size - 1).view(-1, 1, *self.grid)
        return x.expand(-1, 3, -1, -1)
