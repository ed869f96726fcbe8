"""Answer extraction (Video-MME style) and temporal IoU."""
import pytest

from framelab.evaluation.choice import ChoiceAccuracy, extract_choice
from framelab.evaluation.temporal import TemporalIoU, parse_span, temporal_iou


@pytest.mark.parametrize("text,want", [
    ("B", "B"), ("(C)", "C"), ("The best answer is D.", "D"), ("Answer: A. red", "A"),
    ("answer: The answer is (B)", "B"), ("  c ", None), ("Dog", None), ("E", None), ("", None),
    ("I think the object in the video is most likely moving towards the left wall now", None),
    ("It is A because the circle is red and it is moving left across the frame slowly", "A"),
])
def test_extract_choice(text, want):
    assert extract_choice(text) == want


def test_extract_choice_five_options():
    assert extract_choice("The answer is E", choices="ABCDE") == "E"


def test_choice_accuracy_counts_unanswered_as_wrong():
    m = ChoiceAccuracy()
    m.update(["A", "The answer is B", "no idea", "C"], ["A", "B", "C", "D"])
    assert float(m.compute()) == pytest.approx(0.5)
    assert float(m.answered_rate()) == pytest.approx(0.75)


def test_temporal_iou():
    assert parse_span("from 3.5 to 6 s") == (3.5, 6.0)
    assert parse_span("soon") is None
    assert temporal_iou((1.0, 3.0), [(2.0, 4.0)]) == pytest.approx(1 / 3)
    assert temporal_iou((0.0, 1.0), [(2.0, 4.0), (0.5, 1.0)]) == pytest.approx(0.5)
    assert temporal_iou(None, [(2.0, 4.0)]) == 0.0
    m = TemporalIoU()
    m.update(["2.0-4.0", "x"], [[(2.0, 4.0)], [(1.0, 2.0)]])
    assert float(m.compute()) == pytest.approx(0.5)
