"""The world's vocabulary: shape kinds, colours, sizes, directions, walls, regions, class ids.

Everything a task may name lives here, so questions, answers, the text tokenizer's corpus and the
image classes all agree. Positions are in world units: x grows to the right, y grows downwards,
both in [0, 1] (so "top" is y = 0, as in an image).
"""
from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")

COLOURS = {
    "red": (230, 45, 45),
    "green": (45, 200, 70),
    "blue": (55, 95, 245),
    "yellow": (240, 220, 40),
    "cyan": (40, 215, 220),
    "magenta": (215, 55, 215),
    "orange": (250, 140, 25),
    "white": (245, 245, 245),
}
COLOUR_NAMES = tuple(COLOURS)

# collision radius as a fraction of the frame side
SIZES = {"small": 0.07, "medium": 0.10, "large": 0.14}
SIZE_NAMES = tuple(SIZES)

BACKGROUND = (18, 18, 26)

DIRECTIONS = ("left", "right", "up", "down")
WALLS = ("left", "right", "top", "bottom")
REGIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen")

ALL_PAIRS = tuple((s, c) for s in SHAPES for c in COLOUR_NAMES)
# Shape-colour pairs never seen in-domain: one per colour, each shape at least once. They form the
# out-of-domain (compositional) split of every task.
HELD_OUT_PAIRS = frozenset((s, c) for s, c in ALL_PAIRS
                           if (SHAPES.index(s) + COLOUR_NAMES.index(c)) % len(SHAPES) == 5)
IN_DOMAIN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)
OOD_PAIRS = tuple(p for p in ALL_PAIRS if p in HELD_OUT_PAIRS)

NUM_CLASSES = len(ALL_PAIRS)


def class_id(shape: str, colour: str) -> int:
    """Image class of a (shape, colour) pair: shape-major index into ALL_PAIRS."""
    return SHAPES.index(shape) * len(COLOUR_NAMES) + COLOUR_NAMES.index(colour)


def class_name(label: int) -> tuple[str, str]:
    """Inverse of class_id: (shape, colour)."""
    return ALL_PAIRS[label]


def region_of(x: float, y: float) -> str:
    """Quadrant of a point in world units."""
    return ("top-" if y < 0.5 else "bottom-") + ("left" if x < 0.5 else "right")
