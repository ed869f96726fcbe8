"""ImageTokenDataModule: a VQ fitted on the data, token grids + labels, decode back to pixels."""
import numpy as np
import torch

from framelab.datamodules.image_tokens import ImageTokenDataModule, ImageTransform
from framelab.datamodules.vq import PatchVQ
from framelab.world.vocab import NUM_CLASSES, class_id


def test_tokens_labels_and_reconstruction(tmp_path):
    dm = ImageTokenDataModule(samples={"train": 96, "val": 8}, shards=2, cache_dir=str(tmp_path),
                              codebook_size=64, fit_samples=96, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.codebook_size == 64 and dm.grid == (8, 8) and dm.num_classes == NUM_CLASSES
    vq_files = list(tmp_path.glob("images-train-*/vq-64-p4-32-s0.npz"))
    assert len(vq_files) == 1  # saved with the data
    batches = list(dm.train_dataloader())
    assert sum(len(b["labels"]) for b in batches) == 96
    batch = batches[0]
    assert batch["tokens"].shape == (8, 64) and batch["tokens"].dtype == torch.long
    assert int(batch["tokens"].max()) < 64
    shards = dm.shard_set("train")
    reader = ImageTransform(dm.image_tokenizer, 32)
    for key, tokens, label in zip(batch["sample_ids"], batch["tokens"], batch["labels"]):
        i = next(j for j, r in enumerate(shards.refs) if r.key == key)
        meta = __import__("json").loads(shards.read(i)["json"])["meta"]
        assert int(label) == meta["label"] == class_id(meta["shape"], meta["colour"])
        image = torch.as_tensor(reader.image(shards.read(i))).permute(0, 3, 1, 2).float() / 255
        recon = dm.decode(tokens[None])
        assert recon.shape == (1, 3, 32, 32)
        assert (recon - image).abs().mean() < 0.05  # VQ keeps the picture
    # a second datamodule reuses the saved tokenizer: same tokens
    again = ImageTokenDataModule(samples={"train": 96, "val": 8}, shards=2, cache_dir=str(tmp_path),
                                 codebook_size=64, fit_samples=96, batch_size=8)
    assert torch.equal(next(iter(again.train_dataloader()))["tokens"], batch["tokens"])


def test_pretrained_vq_by_path(tmp_path):
    rng = np.random.default_rng(0)
    vq = PatchVQ(rng.random((16, 8 * 8 * 3), dtype=np.float32), 8)
    vq.save(tmp_path / "pre.npz")
    dm = ImageTokenDataModule(samples={"train": 8}, shards=1, cache_dir=str(tmp_path), vq_path=str(tmp_path / "pre.npz"),
                              vq_patch=8, batch_size=4)
    dm.prepare_data()
    batch = next(iter(dm.train_dataloader()))
    assert dm.codebook_size == 16 and dm.grid == (4, 4) and batch["tokens"].shape == (4, 16)
    assert not list(tmp_path.glob("images-train-*/vq-*.npz"))  # nothing fitted
