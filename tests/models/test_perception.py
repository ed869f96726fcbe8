"""Dense perception labels and the perception loss of the vision stage."""
import numpy as np
import torch

from framelab.datamodules.perception_labels import (BACKGROUND_COLOUR, BACKGROUND_DIRECTION,
                                                    BACKGROUND_SHAPE, STILL, clip_labels, motion,
                                                    patch_order, token_labels)
from framelab.models.config import preset
from framelab.models.multimodal import MultimodalLM
from framelab.models.perception import PerceptionHeads, grounding_loss, perception_loss
from framelab.world.vocab import COLOUR_NAMES, DIRECTIONS, SHAPES


def scene(frames=4):
    """Object 0 (red circle, moving right) in the top-left quarter; object 1 (blue ring, still)
    a small box on the corner of four cells of a 4 x 4 grid, invisible from frame 2 on."""
    boxes = np.zeros((frames, 2, 4), np.float32)
    boxes[:, 0] = (0.0, 0.0, 0.25, 0.25)
    boxes[:, 1] = (0.45, 0.45, 0.55, 0.55)
    vel = np.zeros((frames, 2, 2), np.float32)
    vel[:, 0] = (0.05, 0.01)
    visible = np.ones((frames, 2), bool)
    visible[2:, 1] = False
    objects = [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "ring"}]
    return {"boxes": boxes, "vel": vel, "visible": visible}, objects


def test_each_cell_is_labelled_with_the_object_that_covers_it():
    gt, objects = scene()
    labels = token_labels(gt, objects, [0, 1, 2, 3], (2, 4, 4), temporal_patch=2).reshape(2, 4, 4, 3)
    red = (COLOUR_NAMES.index("red"), SHAPES.index("circle"), DIRECTIONS.index("right"))
    blue = (COLOUR_NAMES.index("blue"), SHAPES.index("ring"), STILL)
    background = (BACKGROUND_COLOUR, BACKGROUND_SHAPE, BACKGROUND_DIRECTION)
    assert tuple(labels[0, 0, 0]) == red and tuple(labels[1, 0, 0]) == red
    # the small ring overlaps a quarter of itself with each of the 4 middle cells: all 4 are its
    assert all(tuple(labels[0, h, w]) == blue for h in (1, 2) for w in (1, 2))
    # at the second time step (frame 2) the ring is gone
    assert all(tuple(labels[1, h, w]) == background for h in (1, 2) for w in (1, 2))
    assert int((labels[0, ..., 0] == BACKGROUND_COLOUR).sum()) == 16 - 5


def test_motion_needs_a_dominant_axis():
    assert motion(np.array([0.0, -0.1])) == DIRECTIONS.index("up")
    assert motion(np.array([-0.1, 0.02])) == DIRECTIONS.index("left")
    assert motion(np.array([0.1, 0.09])) == STILL


def test_patch_order_groups_each_merge_block_like_the_tower():
    grid = (1, 2, 2)
    fine = np.arange(16).reshape(16, 1)  # a 4 x 4 patch grid, row-major
    ordered = patch_order(fine, grid, merge=2)[:, 0]
    assert ordered[:4].tolist() == [0, 1, 4, 5] and ordered[4:8].tolist() == [2, 3, 6, 7]


def test_clip_labels_read_the_ground_truth_member():
    import io
    gt, objects = scene()
    buf = io.BytesIO()
    np.savez_compressed(buf, **gt)
    out = clip_labels(buf.getvalue(), objects, [0, 1, 2, 3], (64, 64), patch=8)
    assert out["tokens"].shape == (2 * 4 * 4, 3) and out["patches"].shape == (2 * 64, 3)
    assert out["count"] == 2
    assert clip_labels(b"not an npz", objects, [0, 1], (64, 64), 8) is None
    assert clip_labels(buf.getvalue(), None, [0, 1], (64, 64), 8) is None


def test_the_perception_loss_trains_tower_and_projector_and_skips_unlabelled_videos():
    torch.manual_seed(0)
    config = preset("tiny-video")
    model = MultimodalLM(config, video_token_id=1)
    heads = PerceptionHeads(config)
    gt, objects = scene()
    import io
    buf = io.BytesIO()
    np.savez_compressed(buf, **gt)
    labels = clip_labels(buf.getvalue(), objects, [0, 1, 2, 3], (64, 64), patch=8)
    videos = [torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)]
    loss, terms = perception_loss(model.vision, model.projector, heads, videos, [labels, None])
    assert torch.isfinite(loss) and set(terms) == {
        "tower_colour", "tower_shape", "tower_direction", "merged_colour", "merged_shape",
        "merged_direction", "count"}
    loss.backward()
    assert model.vision.patch_embed.weight.grad.abs().sum() > 0
    assert model.projector.fc2.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.lm.parameters())
    with_objects = PerceptionHeads(config, objects=True)
    _, terms = perception_loss(model.vision, model.projector, with_objects, videos, [labels, None])
    assert {"tower_object_shape", "merged_object_shape"} <= set(terms)
    zero, none = perception_loss(model.vision, model.projector, heads, videos, [None, None])
    assert float(zero.detach()) == 0.0 and none == {}


def test_grounding_loss_names_each_object_tokens_words_and_skips_the_rest():
    """Against a hand-written reference: video 1 of 2 is labelled; its object tokens predict their
    colour, shape and (moving only) direction words through the output head; background tokens,
    the unlabelled video and text positions get no gradient."""
    torch.manual_seed(0)
    vid, vocab, width = 99, 100, 8
    ids = torch.tensor([[1, vid, vid, 2, vid, vid, vid, 3]])          # video 0: 2 slots, 1: 3
    hidden = torch.randn(1, 8, width, requires_grad=True)
    out = torch.randn(vocab, width)
    words = torch.full((3, 9), -1, dtype=torch.long)
    words[0, :8], words[1, :6], words[2, :4] = torch.arange(10, 18), torch.arange(20, 26), \
        torch.arange(30, 34)
    tok = np.array([[0, 0, 1],                                         # red circle, right
                    [BACKGROUND_COLOUR, BACKGROUND_SHAPE, BACKGROUND_DIRECTION],
                    [2, 5, STILL]])                                    # green ring, not moving
    loss = grounding_loss(hidden, ids, vid, [2, 3], [None, {"tokens": tok}], words, out)
    logp = torch.log_softmax(hidden[0].detach() @ out.t(), -1)
    expected = -(logp[4, 10] + logp[4, 20] + logp[4, 31] + logp[6, 12] + logp[6, 25]) / 5
    assert torch.allclose(loss, expected, atol=1e-5)
    loss.backward()
    touched = hidden.grad[0].abs().sum(-1) > 0
    assert touched.tolist() == [False, False, False, False, True, False, True, False]
    assert grounding_loss(hidden, ids, vid, [2, 3], [None, None], words, out) is None
