"""The `cnn` stem convolves whole frames, then cuts the feature map into the patches in the
tower's merged token order: shifting the picture by whole patches shifts the tokens with it, and a
patch's token sees the pixels just across its border (the per-patch `conv` stem does not)."""
import dataclasses

import torch

from framelab.models import preset
from framelab.models.perception import _object_shape_loss
from framelab.models.vision import VisionEncoder


def _tokens(stem: str, video: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny-video").vision, stem=stem, depth=0)
    enc = VisionEncoder(cfg).eval()
    patches, grid = enc.patchify(video)
    with torch.no_grad():
        x = enc.patch_embed(patches, [grid]) if stem == "cnn" else enc.patch_embed(patches)
    t, h, w = grid
    m = cfg.merge   # merged order (t, h/m, w/m, m, m) -> a (t, h, w) grid of tokens
    return x.reshape(t, h // m, w // m, m, m, -1).permute(0, 1, 3, 2, 4, 5).reshape(t, h, w, -1)


def test_shifting_the_picture_by_two_patches_shifts_the_tokens():
    torch.manual_seed(1)
    video = torch.zeros(2, 3, 64, 128)
    video[:, :, 20:36, 28:46] = torch.rand(3, 16, 18)        # an object away from the borders
    shifted = torch.roll(video, shifts=16, dims=3)           # two 8-px patches to the right
    a, b = _tokens("cnn", video), _tokens("cnn", shifted)
    # columns whose receptive field (about +-10 px) stays inside the frame
    torch.testing.assert_close(b[:, 2:6, 5:10], a[:, 2:6, 3:8], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(b[:, 2:6, 5:10], a[:, 2:6, 5:10], atol=1e-2)


def test_a_token_sees_across_its_patch_border_only_with_the_cnn_stem():
    video = torch.zeros(2, 3, 64, 64)
    poked = video.clone()
    poked[:, :, 20, 24] = 1.0                 # the first pixel column of patch (2, 3)
    for stem, crosses in (("cnn", True), ("conv", False)):
        diff = (_tokens(stem, poked) - _tokens(stem, video)).abs().amax(-1)[0]
        assert diff[2, 3] > 0                 # the patch that holds the pixel
        assert (diff[2, 2] > 0) == crosses    # its left neighbour


def test_object_shape_is_read_from_the_maximum_over_each_objects_tokens():
    torch.manual_seed(2)
    head = torch.nn.Linear(4, 6)
    x = torch.randn(7, 4)
    # [colour, shape, direction]; colour 8 is background. Video 0: object (1, 2) on tokens 0, 1;
    # object (3, 5) on token 2; background token 3. Video 1: object (1, 2) again on tokens 4-6.
    labels = torch.tensor([[1, 2, 0], [1, 2, 0], [3, 5, 1], [8, 6, 5], [1, 2, 3], [1, 2, 3],
                           [1, 2, 3]])
    video = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    got = _object_shape_loss(head, x, labels, video)
    pooled = torch.stack([x[[0, 1]].amax(0), x[[2]].amax(0), x[[4, 5, 6]].amax(0)])
    want = torch.nn.functional.cross_entropy(head(pooled), torch.tensor([2, 5, 2]))
    torch.testing.assert_close(got, want)


def test_videos_encoded_together_match_each_encoded_alone():
    """Consecutive videos of one frame size share one batch of convolutions; the tokens must be
    those of each video alone, whatever the sizes' order."""
    torch.manual_seed(3)
    cfg = dataclasses.replace(preset("tiny-video").vision, stem="cnn", depth=0)
    enc = VisionEncoder(cfg).eval()
    videos = [torch.rand(2, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.rand(2, 3, 32, 64),
              torch.rand(2, 3, 32, 32)]
    patches, grids = zip(*(enc.patchify(v) for v in videos))
    with torch.no_grad():
        together = enc.patch_embed(torch.cat(patches), list(grids))
        alone = torch.cat([enc.patch_embed(p, [g]) for p, g in zip(patches, grids)])
    assert together.shape == alone.shape == (sum(p.shape[0] for p in patches), cfg.width)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
