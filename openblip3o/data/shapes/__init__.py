"""ShapesWorld: a synthetic compositional world scored exactly by rule, in GenEval's metadata schema."""

from .examples import Example, ShapesWorld, annotate
from .prompts import GENEVAL_TAG_COUNTS, TAGS, PromptSampler, evaluation_set, make_prompt, validate_record
from .render import render_scene
from .sampler import PlacementError, SceneMix, SceneSampler, realise
from .scene import Scene, ShapeObject
from .text import long_caption, normalize_answer, short_caption, vocabulary, vqa_pairs
from .world import COLORS, HELDOUT_COLOR_SHAPES, HELDOUT_RELATIONS, PALETTE, SHAPES, WorldConfig

__all__ = [
    "COLORS", "Example", "GENEVAL_TAG_COUNTS", "HELDOUT_COLOR_SHAPES", "HELDOUT_RELATIONS", "PALETTE",
    "PlacementError", "PromptSampler", "SHAPES", "Scene", "SceneMix", "SceneSampler", "ShapeObject", "ShapesWorld",
    "TAGS", "WorldConfig", "annotate", "evaluation_set", "long_caption", "make_prompt", "normalize_answer",
    "realise", "render_scene", "short_caption", "validate_record", "vocabulary", "vqa_pairs",
]
