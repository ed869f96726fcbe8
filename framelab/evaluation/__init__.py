"""Metrics: answer extraction and accuracy for video QA (choice.py), temporal IoU for "when"
answers (temporal.py), and image quality with local features (image_quality.py, features.py:
FID, KID, precision/recall, class consistency)."""
from framelab.metrics.choice import ChoiceAccuracy, extract_choice, extract_named
from framelab.metrics.temporal import TemporalIoU, parse_span, temporal_iou

__all__ = ["ChoiceAccuracy", "TemporalIoU", "extract_choice", "extract_named", "parse_span",
           "temporal_iou"]
