"""Motion: constant velocity, elastic bounces off the four walls and off each other.

`simulate` steps every object once per frame and records per-frame states and events. Collisions
treat objects as equal-mass discs of their collision radius. Objects outside their visible span
keep moving and bouncing off walls but touch nothing and produce no wall events.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framelab.world.scene import Obj


@dataclass
class Trajectory:
    """pos, vel: (T, n, 2) float32 in world units; visible: (T, n) bool; events: list of dicts with
    keys t (frame), type (collision | wall | appear | disappear), objects (indices), wall."""
    pos: np.ndarray
    vel: np.ndarray
    visible: np.ndarray
    events: list

    @property
    def frames(self) -> int:
        return self.pos.shape[0]

    def events_of(self, kind: str, obj: int | None = None, after: int = 0) -> list:
        return [e for e in self.events if e["type"] == kind and e["t"] >= after
                and (obj is None or obj in e["objects"])]


def _visible(obj: Obj, t: int) -> bool:
    return obj.t_in <= t and (obj.t_out is None or t < obj.t_out)


def _walls(p: np.ndarray, v: np.ndarray, r: float) -> list[str]:
    hits = []
    if p[0] < r:
        p[0], v[0] = 2 * r - p[0], abs(v[0])
        hits.append("left")
    elif p[0] > 1 - r:
        p[0], v[0] = 2 * (1 - r) - p[0], -abs(v[0])
        hits.append("right")
    if p[1] < r:
        p[1], v[1] = 2 * r - p[1], abs(v[1])
        hits.append("top")
    elif p[1] > 1 - r:
        p[1], v[1] = 2 * (1 - r) - p[1], -abs(v[1])
        hits.append("bottom")
    return hits


def _collide(pos: np.ndarray, vel: np.ndarray, radii: np.ndarray, i: int, j: int) -> bool:
    """Resolve an overlap of i and j; True when they were approaching (a collision event)."""
    d = pos[j] - pos[i]
    dist = float(np.hypot(*d))
    reach = radii[i] + radii[j]
    if dist >= reach or dist == 0.0:
        return False
    n = d / dist
    push = (reach - dist) / 2
    pos[i] -= n * push
    pos[j] += n * push
    approach = float(np.dot(vel[i] - vel[j], n))
    if approach <= 0:
        return False
    vel[i] -= approach * n
    vel[j] += approach * n
    return True


def simulate(objs: list[Obj], frames: int) -> Trajectory:
    """Step the scene for `frames` frames (frame 0 is the initial state)."""
    n = len(objs)
    pos = np.array([o.pos for o in objs], dtype=np.float64).reshape(n, 2)
    vel = np.array([o.vel for o in objs], dtype=np.float64).reshape(n, 2)
    radii = np.array([o.radius for o in objs])
    out_pos = np.zeros((frames, n, 2), np.float32)
    out_vel = np.zeros((frames, n, 2), np.float32)
    visible = np.array([[_visible(o, t) for o in objs] for t in range(frames)], bool).reshape(frames, n)
    events: list[dict] = []
    for i, o in enumerate(objs):
        if 0 < o.t_in < frames:
            events.append({"t": o.t_in, "type": "appear", "objects": [i]})
        if o.t_out is not None and 0 < o.t_out < frames:
            events.append({"t": o.t_out, "type": "disappear", "objects": [i]})
    for t in range(frames):
        if t > 0:
            pos += vel
            for i in range(n):
                for wall in _walls(pos[i], vel[i], radii[i]):
                    if visible[t, i]:
                        events.append({"t": t, "type": "wall", "objects": [i], "wall": wall})
            for i in range(n):
                for j in range(i + 1, n):
                    if visible[t, i] and visible[t, j] and _collide(pos, vel, radii, i, j):
                        events.append({"t": t, "type": "collision", "objects": [i, j]})
            np.clip(pos, radii[:, None], 1 - radii[:, None], out=pos)
        out_pos[t], out_vel[t] = pos, vel
    events.sort(key=lambda e: (e["t"], e["type"], e["objects"]))
    return Trajectory(out_pos, out_vel, visible, events)
