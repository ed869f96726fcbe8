"""Rasterise a simulated scene into RGB frames with numpy, and compute ground-truth boxes.

Each shape is a mask over coordinates normalised by the object's radius (dx, dy in [-1, 1]);
only the object's bounding square is touched, so cost grows with object area, not frame area.
Objects are drawn in index order (later ones on top).
"""
from __future__ import annotations

import numpy as np

from framelab.world.physics import Trajectory
from framelab.world.scene import Obj
from framelab.world.vocab import BACKGROUND, COLOURS


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean mask of `shape` at normalised offsets (dx to the right, dy downwards)."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= 1.0
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8
    if shape == "diamond":
        return ax + ay <= 1.0
    if shape == "triangle":  # apex up
        return (dy <= 0.75) & (ax <= (dy + 0.95) * 0.6)
    if shape == "cross":
        return ((ax <= 0.34) & (ay <= 0.95)) | ((ay <= 0.34) & (ax <= 0.95))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= 1.0) & (d2 >= 0.3)
    raise ValueError(f"unknown shape {shape!r}")


def draw(canvas: np.ndarray, obj: Obj, x: float, y: float, scale: float = 1.0) -> None:
    """Paint one object centred at (x, y) world units onto canvas (H, W, 3) uint8, in place."""
    h, w = canvas.shape[:2]
    r = obj.radius * scale
    x0, x1 = max(int(np.floor((x - r) * w)), 0), min(int(np.ceil((x + r) * w)), w)
    y0, y1 = max(int(np.floor((y - r) * h)), 0), min(int(np.ceil((y + r) * h)), h)
    if x0 >= x1 or y0 >= y1:
        return
    px = ((np.arange(x0, x1) + 0.5) / w - x) / r
    py = ((np.arange(y0, y1) + 0.5) / h - y) / r
    mask = shape_mask(obj.shape, px[None, :], py[:, None])
    canvas[y0:y1, x0:x1][mask] = COLOURS[obj.colour]


def render(objs: list[Obj], traj: Trajectory, size: int | tuple[int, int],
           background=BACKGROUND) -> np.ndarray:
    """All frames of a trajectory: uint8 (T, H, W, 3)."""
    h, w = (size, size) if isinstance(size, int) else size
    frames = np.empty((traj.frames, h, w, 3), np.uint8)
    frames[:] = np.asarray(background, np.uint8)
    for t in range(traj.frames):
        for i, obj in enumerate(objs):
            if traj.visible[t, i]:
                draw(frames[t], obj, float(traj.pos[t, i, 0]), float(traj.pos[t, i, 1]))
    return frames


def boxes(objs: list[Obj], traj: Trajectory) -> np.ndarray:
    """Ground-truth boxes (T, n, 4) as [x0, y0, x1, y1] in [0, 1]; zeros where invisible."""
    radii = np.array([o.radius for o in objs], np.float32).reshape(1, -1, 1)
    lo = np.clip(traj.pos - radii, 0, 1)
    hi = np.clip(traj.pos + radii, 0, 1)
    out = np.concatenate([lo, hi], axis=-1).astype(np.float32)
    out[~traj.visible] = 0
    return out
