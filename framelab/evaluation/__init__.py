"""Evaluation: scoring model answers, with no Lightning in it.

- `video_qa.py`: `VideoQAEvaluator`, the one harness that answers and scores the questions of a
  video-text batch (option-letter scoring or greedy generation; per-task and per-question-type
  metrics, sample text for TensorBoard, predictions).
- `choice.py`: multiple-choice answer extraction (Video-MME style) and `ChoiceAccuracy`.
- `exact.py`: exact match for open answers (`normalize`, `ExactMatch`) and `HitRate`.
- `temporal.py`: "when" spans and `TemporalIoU`.
- `image_quality.py`, `features.py`: FID, KID, precision/recall and class consistency of generated
  images, in the features of a small classifier trained on the embedded world.
"""
from framelab.evaluation.choice import ChoiceAccuracy, extract_choice, extract_named
from framelab.evaluation.exact import ExactMatch, HitRate, exact_match, normalize
from framelab.evaluation.temporal import TemporalIoU, parse_span, temporal_iou
from framelab.evaluation.video_qa import VideoQAEvaluator, evaluation_config

__all__ = ["ChoiceAccuracy", "ExactMatch", "HitRate", "TemporalIoU", "VideoQAEvaluator",
           "evaluation_config", "exact_match", "extract_choice", "extract_named", "normalize",
           "parse_span", "temporal_iou"]
