"""The procedural video world: scenes of moving, bouncing shapes rendered with numpy, with exact
ground truth, and the task generators built on it (describe, needle, future, cue, images).

Bump RECIPE_VERSION whenever a change alters any generated sample: cached shards are keyed by it
and regenerated when it changes.
"""
RECIPE_VERSION = "world-3"
