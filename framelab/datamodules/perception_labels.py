"""Dense perception labels of a world clip: what each merged vision token should see.

The video LLM reads the projector's merged tokens, one per (time step, cell) of the merged grid
(`framelab.models.vision.merged_grid`). For the vision stage, every such token gets the colour,
shape and motion direction of the object that overlaps its cell most at the time step's first
frame -- when the overlap is at least a quarter of the cell or of the object, so a small object
on a cell corner still marks its cells -- or "background", and every clip its object count. The labels come from the world's exact
ground truth stored with each sample (`gt.npz`: boxes, velocities, visibility; `meta.objects`:
shape and colour), for the frames the loader kept.

Label ids: colour 0..7 (`COLOUR_NAMES`), shape 0..5 (`SHAPES`), direction 0..3 (`DIRECTIONS`) or
4 (not clearly moving); background is the last id of each (`BACKGROUND_*`). Count is the number
of objects in the clip.
"""
from __future__ import annotations

import numpy as np

from framelab.world.vocab import COLOUR_NAMES, DIRECTIONS, SHAPES

BACKGROUND_COLOUR, BACKGROUND_SHAPE = len(COLOUR_NAMES), len(SHAPES)
STILL, BACKGROUND_DIRECTION = len(DIRECTIONS), len(DIRECTIONS) + 1
HEADS = {"colour": BACKGROUND_COLOUR + 1, "shape": BACKGROUND_SHAPE + 1,
         "direction": BACKGROUND_DIRECTION + 1}
MIN_COVER = 0.25  # a cell is an object's when their overlap is this share of the smaller of the two


def motion(vel: np.ndarray) -> int:
    """Direction id of a velocity (x right, y down): the dominant axis when it is at least 1.5x
    the other, else STILL."""
    dx, dy = float(vel[0]), float(vel[1])
    if max(abs(dx), abs(dy)) < 1.5 * min(abs(dx), abs(dy)) + 1e-6:
        return STILL
    if abs(dx) > abs(dy):
        return DIRECTIONS.index("right" if dx > 0 else "left")
    return DIRECTIONS.index("down" if dy > 0 else "up")


def token_labels(gt: dict, objects: list[dict], frame_indices: list[int],
                 grid: tuple[int, int, int], temporal_patch: int) -> np.ndarray:
    """int64 (t * h * w, 3) [colour, shape, direction] per merged token, (t, h, w) row-major."""
    t, h, w = grid
    colour = np.array([COLOUR_NAMES.index(o["colour"]) for o in objects])
    shape = np.array([SHAPES.index(o["shape"]) for o in objects])
    out = np.empty((t, h, w, 3), np.int64)
    out[...] = (BACKGROUND_COLOUR, BACKGROUND_SHAPE, BACKGROUND_DIRECTION)
    ys, xs = np.arange(h) / h, np.arange(w) / w
    for step in range(t):
        k = min(step * temporal_patch, len(frame_indices) - 1)
        frame = int(frame_indices[k])
        best = np.full((h, w), MIN_COVER - 1e-6)  # at least MIN_COVER
        for i in range(len(objects)):
            if not gt["visible"][frame, i]:
                continue
            x0, y0, x1, y1 = (float(v) for v in gt["boxes"][frame, i])
            over_y = np.clip(np.minimum(ys + 1 / h, y1) - np.maximum(ys, y0), 0, None)
            over_x = np.clip(np.minimum(xs + 1 / w, x1) - np.maximum(xs, x0), 0, None)
            smaller = min(1 / (h * w), max((x1 - x0) * (y1 - y0), 1e-9))
            cover = over_y[:, None] * over_x[None, :] / smaller
            mine = cover > best
            best = np.where(mine, cover, best)
            out[step][mine] = (colour[i], shape[i], motion(gt["vel"][frame, i]))
    return out.reshape(-1, 3)


def patch_order(labels: np.ndarray, grid: tuple[int, int, int], merge: int) -> np.ndarray:
    """Labels of the unmerged patch grid (t, h * merge, w * merge) row-major -> the vision tower's
    token order, where each merge × merge group is consecutive (models/vision.py)."""
    t, h, w = grid
    return labels.reshape(t, h, merge, w, merge, -1).transpose(0, 1, 3, 2, 4, 5).reshape(
        t * h * w * merge * merge, -1)


def clip_labels(gt_npz: bytes, objects, frame_indices: list[int], size: tuple[int, int],
                patch: int, temporal_patch: int = 2, merge: int = 2) -> dict | None:
    """{"tokens": (n, 3), "patches": (n * merge², 3), "count": objects} of one clip, from its
    `gt.npz` member and `meta.objects`; None when the sample has no usable ground truth. `patch`
    is the data's patch size: one merged token per (2 * patch)² pixels and `temporal_patch` frames;
    "tokens" are in the merged grid's row-major order, "patches" label each patch-size cell in the
    tower's order for a tower of that patch size (`patch_order`)."""
    import io

    if not gt_npz or not isinstance(objects, list) or not objects:
        return None
    try:
        with np.load(io.BytesIO(gt_npz)) as z:
            gt = {k: z[k] for k in ("boxes", "vel", "visible")}
        grid = (-(-len(frame_indices) // temporal_patch), size[0] // (patch * merge),
                size[1] // (patch * merge))
        fine = (grid[0], grid[1] * merge, grid[2] * merge)
        return {"tokens": token_labels(gt, objects, frame_indices, grid, temporal_patch),
                "patches": patch_order(token_labels(gt, objects, frame_indices, fine, temporal_patch),
                                       grid, merge),
                "count": len(objects)}
    except (KeyError, ValueError, IndexError, OSError):
        return None
