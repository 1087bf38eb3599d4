"""Verdicts from the numbers: every paper claim is "supported", "contradicted" or "inconclusive", by one rule (RULE,
also written in the report) applied to every pair of variants that bears on the claim.

The pairs: CLIP vs VAE alignment compares clip and vae at each objective (GenEval); flow matching vs MSE diversity
compares the objectives at each target (diversity); sequential vs joint understanding compares the sequential
reference with the joint run (VQA). Further seeds of the reference variant are not pairs of a claim: their
differences with it are the seed-to-seed spread, shown beside the pairs' differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import REFERENCE_VARIANT, SEED_MARK

SE_MULTIPLIER = 2.0  # a difference counts when it exceeds this many standard errors of the difference
VACUOUS_VQA = 0.05  # below this after understanding there is no understanding to keep: the claim is not tested
P_FLOOR = 1e-12  # p (1 - p) at p = 0 or 1: a score at the floor or ceiling still has a (tiny) standard error
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
NOT_MEASURED, NOT_TESTED = "not measured", "not tested"
JOINT_VARIANT = "clip-flow-joint"
DIGITS, DIVERSITY_DIGITS = 3, 4  # diversity differences live in the third decimal
RULE = (f"A claim is **{SUPPORTED}** when every pair of variants that bears on it differs in the claim's direction "
        f"by more than {SE_MULTIPLIER:g} standard errors of the difference, **{CONTRADICTED}** when every pair "
        f"differs by more than that against it, and **{INCONCLUSIVE}** otherwise (a pair within noise, or pairs that "
        "disagree: a mixed result). Standard errors: GenEval binomial over its images (the samples of one prompt "
        "counted as independent), diversity the standard error of the mean per-prompt difference (paired by "
        "prompt: every variant draws the same prompts), VQA binomial over its questions.")


@dataclass(frozen=True)
class Difference:
    """`first` minus `second` on `metric`, with the standard error of that difference."""

    first: str
    second: str
    metric: str
    delta: float
    se: float

    @property
    def sign(self) -> int:
        """+1 beyond SE_MULTIPLIER standard errors above zero, -1 beyond them below, 0 within noise."""
        margin = SE_MULTIPLIER * self.se
        return 1 if self.delta > margin else -1 if -self.delta > margin else 0

    def text(self, digits: int = 3) -> str:
        noise = SE_MULTIPLIER * self.se
        return f"{self.first} − {self.second} {self.delta:+.{digits}f} ({SE_MULTIPLIER:g} SE {noise:.{digits}f})"


@dataclass(frozen=True)
class Judgement:
    claim: str
    verdict: str
    differences: list[Difference]
    detail: str


def binomial_se(p: float, n: int | None) -> float:
    """The standard error of a proportion p over n trials (infinite when n is unknown: nothing can count)."""
    return math.sqrt(max(p * (1 - p), P_FLOOR) / n) if n else math.inf


def geneval_difference(v: dict, a: str, b: str) -> Difference:
    ga, gb = v[a]["geneval"], v[b]["geneval"]
    se = math.hypot(binomial_se(ga["overall"], ga["images"]), binomial_se(gb["overall"], gb["images"]))
    return Difference(a, b, "GenEval", ga["overall"] - gb["overall"], se)


def mean_se(values: list[float] | None) -> float:
    """The standard error of a mean (infinite with fewer than two values)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if values and len(values) > 1 else math.inf


def diversity_difference(v: dict, a: str, b: str) -> Difference:
    """Paired by prompt when both rows hold per-prompt values for the same prompts; else the unpaired SE."""
    pa, pb = v[a].get("diversity_per_prompt"), v[b].get("diversity_per_prompt")
    if pa and pb and len(pa) == len(pb):
        se = mean_se(list(np.subtract(pa, pb)))
    else:
        se = math.hypot(mean_se(pa), mean_se(pb))
    return Difference(a, b, "diversity", v[a]["diversity"] - v[b]["diversity"], se)


def vqa_difference(v: dict, a: str, b: str) -> Difference:
    se = math.hypot(binomial_se(v[a]["vqa_final"], v[a].get("vqa_questions")),
                    binomial_se(v[b]["vqa_final"], v[b].get("vqa_questions")))
    return Difference(a, b, "VQA", v[a]["vqa_final"] - v[b]["vqa_final"], se)


def verdict(differences: list[Difference]) -> str:
    """The rule: every pair beyond noise in the claim's direction (+), every pair beyond it against (-)."""
    signs = [d.sign for d in differences]
    if not signs:
        return NOT_MEASURED
    if all(s > 0 for s in signs):
        return SUPPORTED
    if all(s < 0 for s in signs):
        return CONTRADICTED
    return INCONCLUSIVE


def _pairs(v: dict, pairs: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in pairs if a in v and b in v]


def judge(v: dict) -> list[Judgement]:
    """The three claims against the rows `v` (the results' variants, or the equal-steps ones)."""
    targets = _pairs(v, (("clip-flow", "vae-flow"), ("clip-mse", "vae-mse")))
    alignment = [geneval_difference(v, c, a) for c, a in targets]
    objective = _pairs(v, (("clip-flow", "clip-mse"), ("vae-flow", "vae-mse")))
    spread = [diversity_difference(v, f, m) for f, m in objective]
    aligned = "; ".join(f"GenEval {f} {v[f]['geneval']['overall']:.3f} vs {m} {v[m]['geneval']['overall']:.3f}"
                        for f, m in objective)
    judgements = [
        Judgement("CLIP features beat VAE latents for prompt alignment (GenEval)", verdict(alignment), alignment, ""),
        Judgement("Flow matching beats MSE, which collapses diversity (diversity)", verdict(spread), spread,
                  f"alignment for reference: {aligned}" if aligned else ""),
    ]
    seq, joint = v.get(REFERENCE_VARIANT), v.get(JOINT_VARIANT)
    understanding = [vqa_difference(v, REFERENCE_VARIANT, JOINT_VARIANT)] if seq and joint else []
    detail, result = "", verdict(understanding)
    if seq and seq.get("vqa_after_understanding") is not None:
        before = seq["vqa_after_understanding"]
        detail = f"sequential VQA {before:.3f} after understanding → {seq['vqa_final']:.3f} after generation"
        if before <= VACUOUS_VQA:
            detail += f" (≤ {VACUOUS_VQA:g}: understanding was never learned at this budget, nothing to keep)"
            result = NOT_TESTED
    judgements.append(Judgement("Sequential training keeps understanding, joint training does not (VQA)", result,
                                understanding, detail))
    return judgements


def claims(results: dict) -> list[str]:
    """One markdown line per paper claim: the verdict, every pair's difference and its noise."""
    lines = []
    for j in judge(results["variants"]):
        why = {NOT_MEASURED: " (the variants it needs were not run)"}.get(j.verdict, "")
        parts = [d.text(DIVERSITY_DIGITS if d.metric == "diversity" else DIGITS) for d in j.differences]
        numbers = "; ".join(parts + ([j.detail] if j.detail else []))
        lines.append(f"- *{j.claim}*: **{j.verdict}**{why} — {numbers or 'n/a'}.")
    return lines


def seed_spread(v: dict) -> list[Difference]:
    """The reference variant against each of its further training seeds, on every metric a claim uses."""
    seeds = [k for k in v if k.startswith(f"{REFERENCE_VARIANT}{SEED_MARK}")]
    if REFERENCE_VARIANT not in v:
        return []
    return [compare(v, REFERENCE_VARIANT, k) for k in seeds for compare in
            (geneval_difference, diversity_difference, vqa_difference)]


def differences_table(v: dict) -> list[str]:
    """Every claim pair's difference beside the seed-to-seed spread, with the 2 SE each must exceed."""
    rows = [f"| pair | metric | difference | {SE_MULTIPLIER:g} SE | beyond noise |", "|---|---|---|---|---|"]
    labelled = [(d, "") for j in judge(v) for d in j.differences] + [(d, " (seed spread)") for d in seed_spread(v)]
    for d, kind in labelled:
        digits = DIVERSITY_DIGITS if d.metric == "diversity" else DIGITS
        rows.append(f"| {d.first} − {d.second}{kind} | {d.metric} | {d.delta:+.{digits}f} | "
                    f"{SE_MULTIPLIER * d.se:.{digits}f} | {'yes' if d.sign else 'no'} |")
    return rows
