"""The study's settings: the variants, the typed config, the rows it trains and the prompts it measures on.

A row is one trained model: every variant once, and the reference variant again with further training seeds
(`clip-flow@seed1`, ...) so that the seed-to-seed spread can be shown beside the differences between variants.
"""

from __future__ import annotations

import dataclasses

from ..config import ModelConfig, merge
from ..data.shapes import evaluation_set
from ..data.shapes.prompts import TAGS

# tag -> (model overrides, joint training)
VARIANTS: dict[str, tuple[dict, bool]] = {
    "clip-flow": ({"target": {"kind": "clip"}, "objective": {"name": "flow_matching"}}, False),
    "clip-mse": ({"target": {"kind": "clip"}, "objective": {"name": "mse"}}, False),
    "vae-flow": ({"target": {"kind": "vae"}, "objective": {"name": "flow_matching"}}, False),
    "vae-mse": ({"target": {"kind": "vae"}, "objective": {"name": "mse"}}, False),
    "clip-flow-joint": ({"target": {"kind": "clip"}, "objective": {"name": "flow_matching"}}, True),
}
REFERENCE_VARIANT = "clip-flow"  # its target encoder is the FD feature space; its VQA is the joint run's baseline
SEED_MARK = "@seed"  # a further training seed of a variant: "clip-flow@seed1"


@dataclasses.dataclass
class StudyConfig:
    preset: str = "mini"
    budget_minutes: float | None = None  # training minutes per variant; None = equal steps
    steps_scale: float = 1.0  # the step scale of every variant when there is no budget
    probe_scale: float = 0.01  # timing probe (budget mode): the variant trained at this scale and twice it
    # 34 x 6 tags = 204 held-out prompts: at 4 samples a binomial SE of at most 0.018 on GenEval overall, small
    # enough to separate variants about 0.05 apart at 2 SE
    prompts_per_tag: int = 34
    n_samples: int = 4
    num_inference_steps: int | None = None  # DiT steps (default: the model's)
    decoder_num_inference_steps: int | None = None
    vqa_scenes: int = 100
    batch_size: int = 16
    seed: int = 0
    variants: tuple[str, ...] = tuple(VARIANTS)
    init: str | None = None  # a trained pipeline (folder or "mini"): its backbone and autoencoders are reused
    # training seeds of the reference variant (seed, seed + 1, ...): two runs of one generation recipe were seen to
    # differ as much as the recipes compared (README), so the study shows that spread beside the differences
    reference_seeds: int = 2
    # budget mode: a variant whose training minutes fall short of the budget by more than this share is topped up
    top_up_tolerance: float = 0.03
    max_top_ups: int = 3  # top-up rounds per variant (each measures its own overhead for the next)
    # budget mode: also measure every variant at one common generation step count, from the runs' checkpoints
    equal_steps_too: bool = False

    def __post_init__(self):
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown study variant {unknown[0]!r}; variants: {', '.join(VARIANTS)}")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ValueError("--budget-minutes must be positive")
        if self.steps_scale <= 0 or self.probe_scale <= 0:
            raise ValueError("step scales must be positive")
        if self.prompts_per_tag < 1 or self.n_samples < 2:
            raise ValueError("the study needs at least one prompt per tag and two samples per prompt (diversity)")
        if self.reference_seeds < 1:
            raise ValueError("--reference-seeds must be at least 1")
        if not 0 < self.top_up_tolerance < 1 or self.max_top_ups < 0:
            raise ValueError("the top-up tolerance is a share in (0, 1) and its rounds are not negative")
        if self.equal_steps_too and not self.budget_minutes:
            raise ValueError("--equal-steps-too compares equal-time runs at equal steps: it needs --budget-minutes "
                             "(without a budget every variant already trains the same steps)")


@dataclasses.dataclass(frozen=True)
class Row:
    """One trained model of the study: `key` names it in the results, `tag` is its variant."""

    key: str
    tag: str
    seed: int

    @property
    def joint(self) -> bool:
        return VARIANTS[self.tag][1]

    @property
    def final_stage(self) -> str:
        """The stage the budget is spent on and whose checkpoints hold the equal-steps models."""
        return "joint" if self.joint else "generation"


def study_rows(cfg: StudyConfig) -> list[Row]:
    """Every chosen variant at `cfg.seed`; the reference variant again at each further seed, right after it."""
    rows = []
    for tag in cfg.variants:
        rows.append(Row(tag, tag, cfg.seed))
        if tag == REFERENCE_VARIANT:
            rows += [Row(f"{tag}{SEED_MARK}{k}", tag, cfg.seed + k) for k in range(1, cfg.reference_seeds)]
    return rows


def variant_config(base: ModelConfig, tag: str) -> ModelConfig:
    return merge(base, VARIANTS[tag][0])


def study_prompts(per_tag: int) -> list[dict]:
    """The first `per_tag` held-out prompts of every GenEval tag, in tag order."""
    records = evaluation_set("heldout")
    return [r for tag in TAGS for r in [r for r in records if r["tag"] == tag][:per_tag]]
