"""`framelab bench probe --ckpt CKPT [--json PATH]`: does the vision tower perceive?

Linear probes of colour, shape, motion direction and object count, read from the tower's output
(before the merge) and from the projector's output (the tokens the LM reads), on held-out clips.
The clips are rendered from the world's `describe` task as the default run sees them (64 px, up
to 3 objects, 4 frames); the probes train on `--train` clips of the train split and are scored on
`--test` clips of the test split. An object's features are the mean of the tokens that cover it
at the first time step (`datamodules.perception_labels`); a clip's features for count are the mean
of all its tokens. A probe is a multinomial logistic regression (standardised features, L2, LBFGS).
Chance: colour 1/8, shape 1/6, direction 1/4 (objects clearly moving only), count 1/3.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from framelab.benchmarks._common import print_table, write_json
from framelab.datamodules.decode import select_frames, to_tensor
from framelab.datamodules.perception_labels import BACKGROUND_COLOUR, STILL, patch_order, token_labels
from framelab.errors import UserError
from framelab.models.vision import merged_grid
from framelab.world.tasks import describe

TARGETS = ("colour", "shape", "direction", "count")


def load_model(ckpt: str):
    from framelab.checkpoints import read_weights
    from framelab.datamodules.special_tokens import VIDEO_PAD
    from framelab.models.config import ModelConfig
    from framelab.models.multimodal import MultimodalLM

    source = read_weights(ckpt, "--ckpt")
    config = source["spec"]["config"]
    if not isinstance(config.get("vision"), dict):
        raise UserError(f"--ckpt {ckpt}: a checkpoint without a vision tower; give a video-LLM one")
    model = MultimodalLM(ModelConfig.from_dict(dict(config)),
                         source["spec"]["tokens"].get(VIDEO_PAD, 0))
    model.load_state_dict(source["state_dict"])
    return model.eval()


def clips(split: str, n: int, size: int, frames: int, max_objects: int, vision) -> list[dict]:
    """n rendered clips with their frames and the labels of their tokens at both levels."""
    cfg = {"size": size, "max_objects": max_objects}
    out = []
    for i in range(n):
        s = describe.make(split, i, cfg)
        index = select_frames(len(s.frames), "uniform", frames)
        grid = merged_grid(len(index), size, size, vision)
        m = vision.merge
        fine = token_labels(s.gt, s.meta["objects"], index, (grid[0], grid[1] * m, grid[2] * m),
                            vision.temporal_patch)
        out.append({"video": to_tensor(s.frames[index], (size, size)), "count": len(s.meta["objects"]),
                    "merged": token_labels(s.gt, s.meta["objects"], index, grid, vision.temporal_patch),
                    "tower": patch_order(fine, grid, m), "per_step": grid[1] * grid[2]})
    return out


@torch.no_grad()
def features(model, data: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{f"{level}/{target}": (X, y)} for level in (tower, merged)."""
    rows: dict[str, list] = {}
    for clip in data:
        tower = model.vision([clip["video"]])[0]
        levels = {"tower": (tower, clip["tower"], clip["per_step"] * model.config.vision.merge ** 2),
                  "merged": (model.projector(tower), clip["merged"], clip["per_step"])}
        for level, (x, labels, per_step) in levels.items():
            x, labels = x[:per_step].float().numpy(), labels[:per_step]
            rows.setdefault(f"{level}/count", []).append((x.mean(0), clip["count"]))
            for colour in np.unique(labels[:, 0]):
                if colour == BACKGROUND_COLOUR:
                    continue
                mine = labels[:, 0] == colour
                f, (shape, move) = x[mine].mean(0), labels[mine][0, 1:]
                rows.setdefault(f"{level}/colour", []).append((f, colour))
                rows.setdefault(f"{level}/shape", []).append((f, shape))
                if move != STILL:
                    rows.setdefault(f"{level}/direction", []).append((f, move))
    return {k: (np.stack([r[0] for r in v]), np.array([r[1] for r in v])) for k, v in rows.items()}


def linear_probe(train: tuple, test: tuple, l2: float = 1e-3, iters: int = 200) -> float:
    """Held-out accuracy of a multinomial logistic regression fitted on `train`."""
    (x, y), (xt, yt) = train, test
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xt = torch.tensor((x - mean) / std), torch.tensor((xt - mean) / std)
    classes = int(max(y.max(), yt.max())) + 1
    w = torch.zeros(x.shape[1], classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    target = torch.tensor(y)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, target) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xt @ w + b).argmax(-1).numpy() == yt).mean())


def probe(model, n_train: int, n_test: int, size: int, frames: int, max_objects: int) -> list[dict]:
    vision = model.config.vision
    train = features(model, clips("train", n_train, size, frames, max_objects, vision))
    test = features(model, clips("test", n_test, size, frames, max_objects, vision))
    rows = []
    for level in ("tower", "merged"):
        row = {"features": "tower (before the merge)" if level == "tower" else "projector (what the LM reads)"}
        for target in TARGETS:
            key = f"{level}/{target}"
            row[target] = round(linear_probe(train[key], test[key]), 3)
        rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="framelab bench probe", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a video-LLM or vision-stage checkpoint")
    p.add_argument("--train", type=int, default=600, help="clips the probes are fitted on")
    p.add_argument("--test", type=int, default=300, help="held-out clips they are scored on")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--max-objects", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    model = load_model(args.ckpt)
    rows = probe(model, args.train, args.test, args.size, args.frames, args.max_objects)
    print_table(rows, ["features", *TARGETS])
    print("chance: colour 0.125, shape 0.167, direction 0.25, count 0.333")
    write_json(args.json, {"ckpt": args.ckpt, "probes": rows})
    return 0
