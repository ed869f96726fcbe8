"""Image-quality metrics with local features (FID, KID, precision/recall, class consistency)."""
