"""World: determinism, physics events, rendering and boxes."""
import numpy as np

from framelab.world.physics import simulate
from framelab.world.render import boxes, render
from framelab.world.scene import Obj
from framelab.world.vocab import (ALL_PAIRS, COLOURS, HELD_OUT_PAIRS, IN_DOMAIN_PAIRS, NUM_CLASSES, SHAPES,
                                  class_id, class_name)


def test_vocabulary_sizes_and_classes():
    assert len(SHAPES) >= 4 and len(COLOURS) >= 8
    assert NUM_CLASSES == len(SHAPES) * len(COLOURS)
    assert all(class_name(class_id(s, c)) == (s, c) for s, c in ALL_PAIRS)
    assert not set(IN_DOMAIN_PAIRS) & HELD_OUT_PAIRS
    assert {s for s, _ in HELD_OUT_PAIRS} == set(SHAPES)  # every shape has an unseen colour


def test_wall_bounce_reflects_and_records_event():
    obj = Obj("circle", "red", "medium", (0.2, 0.5), (-0.05, 0.0))
    traj = simulate([obj], 10)
    walls = [e for e in traj.events if e["type"] == "wall"]
    assert walls and walls[0]["wall"] == "left" and walls[0]["t"] == 3
    assert traj.vel[-1, 0, 0] > 0  # moving right after the bounce
    assert (traj.pos[:, 0, 0] >= obj.radius - 1e-6).all()


def test_head_on_collision_exchanges_velocities():
    a = Obj("circle", "red", "medium", (0.3, 0.5), (0.02, 0.0))
    b = Obj("square", "blue", "medium", (0.7, 0.5), (-0.02, 0.0))
    traj = simulate([a, b], 12)
    hits = [e for e in traj.events if e["type"] == "collision"]
    assert len(hits) == 1 and hits[0]["objects"] == [0, 1]
    assert traj.vel[-1, 0, 0] < 0 < traj.vel[-1, 1, 0]
    # separated: never overlapping after the collision frame
    d = np.abs(traj.pos[hits[0]["t"]:, 0, 0] - traj.pos[hits[0]["t"]:, 1, 0])
    assert (d >= a.radius + b.radius - 1e-5).all()


def test_appear_disappear_events_and_visibility():
    a = Obj("ring", "green", "small", (0.5, 0.5), (0.0, 0.0), t_in=3, t_out=6)
    traj = simulate([a], 8)
    kinds = [(e["type"], e["t"]) for e in traj.events]
    assert kinds == [("appear", 3), ("disappear", 6)]
    assert traj.visible[:, 0].tolist() == [False] * 3 + [True] * 3 + [False] * 2
    frames = render([a], traj, 32)
    assert len(np.unique(frames[0].reshape(-1, 3), axis=0)) == 1  # invisible
    assert len(np.unique(frames[4].reshape(-1, 3), axis=0)) == 2  # visible
    assert (boxes([a], traj)[0] == 0).all()


def test_render_colour_and_box_location():
    obj = Obj("square", "blue", "large", (0.25, 0.75), (0.0, 0.0))
    traj = simulate([obj], 2)
    frame = render([obj], traj, 64)[0]
    ys, xs = np.nonzero((frame == COLOURS["blue"]).all(-1))
    x0, y0, x1, y1 = boxes([obj], traj)[0, 0]
    assert x0 * 64 <= xs.min() and xs.max() < x1 * 64 and y0 * 64 <= ys.min() and ys.max() < y1 * 64
    assert abs(xs.mean() / 64 - 0.25) < 0.02 and abs(ys.mean() / 64 - 0.75) < 0.02


def test_every_shape_renders_distinct_masks():
    masks = []
    for shape in SHAPES:
        obj = Obj(shape, "white", "large", (0.5, 0.5), (0.0, 0.0))
        masks.append((render([obj], simulate([obj], 1), 48)[0] == 245).all(-1))
    for i in range(len(masks)):
        assert masks[i].sum() > 20
        for j in range(i):
            assert (masks[i] != masks[j]).sum() > 10, (SHAPES[i], SHAPES[j])
