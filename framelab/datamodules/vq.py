"""Image tokenizers: images <-> discrete token grids.

`PatchVQ` is the one framelab fits on its own data: k-means over non-overlapping p x p RGB
patches (Lloyd iterations from distinct data patches; empty clusters re-seeded with the worst-fit
patches), saved as an .npz with the data and read back by `load_image_tokenizer` (arrays only).
A subclass of ImageTokenDataModule may use any object with the same four members: `codebook_size`, `patch` (pixels per token side), `encode(images uint8
(N, H, W, 3)) -> int64 (N, H/p * W/p)` row-major, `decode(tokens (N, h*w), grid (h, w)) -> float32
tensor (N, 3, h*p, w*p) in [0, 1]`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from framelab.errors import UserError


class PatchVQ:
    """Nearest-codeword quantisation of p x p patches; codebook (K, p*p*3) in [0, 1]."""

    def __init__(self, codebook: np.ndarray, patch: int):
        self.codebook = torch.as_tensor(np.asarray(codebook, np.float32))
        self.patch = int(patch)
        self._np = None  # (codebook transposed, squared norms) for encode (built on first use)
        if self.codebook.shape[1] != self.patch * self.patch * 3:
            raise ValueError(f"codebook width {self.codebook.shape[1]} does not match patch {patch}")

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def patches(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, h*w, p*p*3) float in [0, 1], row-major over the grid."""
        x = torch.as_tensor(np.asarray(images)).float().div_(255.0)
        n, h, w, _ = x.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
        x = x.reshape(n, h // p, p, w // p, p, 3).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, (h // p) * (w // p), p * p * 3)

    def _nearest(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T
             + self.codebook.pow(2).sum(1)[None])
        dist, idx = d.min(1)
        return idx, dist

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> int64 (N, h*w). In torch, which runs as many threads as the process
        is given (one in a DataLoader worker), not numpy's BLAS, whose own threads contend with the
        other workers for the cores and make each small product many times slower."""
        images = np.asarray(images)
        n, h, w, _ = images.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
        x = torch.from_numpy(np.ascontiguousarray(images)).reshape(n, h // p, p, w // p, p, 3)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, p * p * 3).float().mul_(1.0 / 255.0)
        if self._np is None:
            self._np = (self.codebook.T.contiguous(), self.codebook.pow(2).sum(1))
        cb_t, cb_sq = self._np
        with torch.no_grad():
            return (cb_sq - 2.0 * (x @ cb_t)).argmin(1).reshape(n, -1).numpy()

    def decode(self, tokens, grid: tuple[int, int]) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        h, w, p = grid[0], grid[1], self.patch
        x = self.codebook[tokens.reshape(-1, h * w)].reshape(-1, h, w, p, p, 3)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, 3, h * p, w * p).clamp(0, 1)

    @classmethod
    def fit(cls, images: np.ndarray, codebook_size: int = 256, patch: int = 4, iters: int = 20,
            seed: int = 0) -> "PatchVQ":
        """k-means on the patches of `images` (uint8 (N, H, W, 3)); deterministic given seed.
        Runs on the distinct patches weighted by their counts (the same objective, far fewer rows)."""
        vq = cls(np.zeros((1, patch * patch * 3), np.float32), patch)
        data, weight = torch.unique(vq.patches(images).reshape(-1, patch * patch * 3), dim=0,
                                    return_counts=True)
        weight = weight.float()
        g = torch.Generator().manual_seed(seed)
        start = data[torch.randperm(len(data), generator=g)[:codebook_size]]
        if len(start) < codebook_size:  # fewer distinct patches than codes: pad with copies
            start = torch.cat([start, start[torch.randint(len(start), (codebook_size - len(start),), generator=g)]])
        vq.codebook = start.clone()
        vq._np = None
        for _ in range(iters):
            idx, dist = vq._nearest(data)
            sums = torch.zeros_like(vq.codebook).index_add_(0, idx, data * weight[:, None])
            mass = torch.zeros(codebook_size).index_add_(0, idx, weight)
            empty = mass == 0
            vq.codebook = torch.where(empty[:, None], vq.codebook, sums / mass.clamp(min=1e-12)[:, None])
            if empty.any():
                worst = (dist * weight).argsort(descending=True)[: int(empty.sum())]
                vq.codebook[empty] = data[worst]
        vq._np = None
        return vq

    def save(self, path: str | Path) -> None:
        tmp = Path(f"{path}.tmp.npz")
        np.savez(tmp, codebook=self.codebook.numpy(), patch=np.asarray(self.patch))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PatchVQ":
        try:
            with np.load(path) as z:
                return cls(z["codebook"], int(z["patch"]))
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"cannot load image tokenizer {path}: {e}; expected an .npz with "
                            "'codebook' (K, p*p*3) and 'patch'") from None


def load_image_tokenizer(path: str):
    """A PatchVQ .npz (arrays only: nothing in the file can run code)."""
    if not Path(path).is_file():
        raise UserError(f"image tokenizer {path} not found; give a PatchVQ .npz (vq_path)")
    return PatchVQ.load(path)
