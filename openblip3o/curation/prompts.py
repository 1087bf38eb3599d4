"""The prompt plan: weighted categories -> templated prompts -> (optional) chat expansion -> de-duplicated items.

Two sources, one interface (`(category, prompt)` draws from a seeded `random.Random`):
- full scale: the shipped `categories.yaml` table (the BLIP3o-60k categories, each with templates and word lists);
- mini scale: ShapesWorld's six GenEval tags through `PromptSampler("train")`, weighted by `tag_weights` of the
  per-tag scores of an evaluator summary (`{"tags": {tag: score}}`), so the weakest tags get the most prompts.

The plan is frozen on first use as `prompts.jsonl` in the output folder: expansion goes through a remote model and is
not reproducible, and item ids are (prompt index, seed), so a rerun must see exactly the same prompts in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
from dataclasses import asdict
from pathlib import Path

from .config import CurateConfig
from .dedup import Deduplicator, normalise
from .items import Item, item_id

CATEGORIES_FILE = Path(__file__).with_name("categories.yaml")
PLAN_NAME = "prompts.jsonl"
PLAN_HEADER_KIND = "openblip3o-curation-plan"
TEMP_SUFFIX = ".tmp"


def load_categories(path: str | Path = CATEGORIES_FILE) -> dict[str, dict]:
    """The category table: name -> {weight, templates, words}; every template slot must have a word list."""
    import yaml

    table = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["categories"]
    for name, entry in table.items():
        slots = {field for t in entry["templates"] for _, field, _, _ in string.Formatter().parse(t) if field}
        missing = slots - set(entry["words"])
        if missing:
            raise ValueError(f"{path}: category {name} uses slots without word lists: {sorted(missing)}")
    return table


def fill(template: str, words: dict[str, list[str]], rng: random.Random) -> str:
    slots = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    return template.format(**{slot: rng.choice(words[slot]) for slot in sorted(slots)})  # sorted: seed-stable


def _weights(requested: dict, available: dict[str, float], what: str) -> dict[str, float]:
    """The config's weights (a subset, possibly reweighted) or the defaults; unknown names are errors."""
    unknown = sorted(set(requested) - set(available))
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; known: {', '.join(available)}")
    weights = {name: float(w) for name, w in requested.items()} if requested else dict(available)
    if not any(weights.values()):
        raise ValueError(f"all {what} weights are zero")
    return weights


def load_scores(path: str | Path) -> dict[str, float]:
    """Per-tag scores from an evaluator summary JSON `{"tags": {tag: score}}` (as `openblip3o eval score` writes)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    tags = data.get("tags") if isinstance(data, dict) else None
    if not isinstance(tags, dict) or not all(isinstance(v, (int, float)) for v in tags.values()):
        raise ValueError(f"{path}: expected an evaluator summary {{\"tags\": {{tag: score}}}}")
    return {tag: float(score) for tag, score in tags.items()}


class PromptSource:
    """Draws `(category, prompt)` pairs by weight for the config's scale."""

    def __init__(self, config: CurateConfig):
        if config.scale == "mini":
            from ..data.shapes.prompts import TAGS, PromptSampler
            from ..data.tag_weights import tag_weights

            scores = load_scores(config.scores) if config.scores else None
            self.weights = _weights(config.categories, tag_weights(scores), "tag")
            sampler = PromptSampler("train")  # never a held-out combination: the evaluation stays unseen
            assert set(self.weights) <= set(TAGS)
            self._draw = lambda tag, rng: sampler.sample(tag, rng)
        else:
            table = load_categories()
            self.weights = _weights(config.categories, {n: float(e["weight"]) for n, e in table.items()}, "category")
            self._draw = lambda name, rng: {"prompt": fill(rng.choice(table[name]["templates"]), table[name]["words"], rng)}
        self.names, self.probs = list(self.weights), list(self.weights.values())

    def draw(self, rng: random.Random) -> tuple[str, str, dict | None]:
        """(category, normalised prompt, the GenEval record at mini scale else None)."""
        category = rng.choices(self.names, self.probs)[0]
        drawn = self._draw(category, rng)
        metadata = drawn if "include" in drawn else None
        return category, normalise(drawn["prompt"]), metadata


def expand(prompt: str, config: CurateConfig, session) -> str:
    """The prompt rewritten by the chat model, or unchanged when the answer is empty."""
    from .client import chat_completion

    answer = normalise(chat_completion(session, config.expansion, prompt))
    if len(answer) > config.expansion.max_chars:
        answer = answer[:config.expansion.max_chars].rsplit(" ", 1)[0]
    return answer or prompt


def build_prompts(config: CurateConfig) -> tuple[list[dict], dict]:
    """`num_items` distinct prompts `{prompt, category}` and counts of what de-duplication refused."""
    rng = random.Random(config.seed)
    source = PromptSource(config)
    dedup = Deduplicator(config.dedup.near_threshold, config.dedup.ngram)
    prompts: list[dict] = []
    budget = config.num_items * config.dedup.max_attempts_factor
    for _ in range(budget):
        if len(prompts) == config.num_items:
            break
        category, prompt, metadata = source.draw(rng)
        if dedup.add(prompt) is None:
            prompts.append({"prompt": prompt, "category": category, **({"metadata": metadata} if metadata else {})})
    stats = {"drawn_duplicates": dict(dedup.refused), "exhausted": len(prompts) < config.num_items}
    if config.expansion.base_url:
        from .client import make_session

        after = Deduplicator(config.dedup.near_threshold, config.dedup.ngram)
        key = config.expansion.api_key or config.endpoint.api_key  # usually the same provider
        with make_session(key, config.endpoint.timeout_s) as session:
            expanded = [{**p, "prompt": expand(p["prompt"], config, session), "original": p["prompt"]}
                        for p in prompts]
        stats["expansion_failed"] = sum(p["prompt"] == p["original"] for p in expanded)  # kept unexpanded
        prompts = [p for p in expanded if after.add(p["prompt"]) is None]
        stats["expanded_duplicates"] = dict(after.refused)
    return prompts, stats


def fingerprint(config: CurateConfig) -> str:
    """What determines the plan: a rerun with another one in the same folder would mix two datasets."""
    parts = {"scale": config.scale, "num_items": config.num_items, "images_per_prompt": config.images_per_prompt,
             "seed": config.seed, "categories": config.categories, "dedup": asdict(config.dedup),
             "expansion": {k: v for k, v in asdict(config.expansion).items() if k != "api_key"},
             "scores": Path(config.scores).read_text(encoding="utf-8") if config.scores else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def plan_items(prompts: list[dict], config: CurateConfig) -> list[Item]:
    """Image j of prompt p gets seed SEED + p * images_per_prompt + j (as `openblip3o generate` numbers seeds)."""
    k = config.images_per_prompt
    return [Item(item_id(p, config.seed + p * k + j), p, rec["prompt"], rec["category"], config.seed + p * k + j,
                 rec.get("metadata")) for p, rec in enumerate(prompts) for j in range(k)]


def load_or_build_plan(config: CurateConfig, out: Path) -> tuple[list[Item], dict]:
    """The frozen plan of `out` (built and written atomically the first time)."""
    path, print_ = out / PLAN_NAME, fingerprint(config)
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0])
        if header.get("fingerprint") != print_:
            raise ValueError(f"{out} holds a curation run with another plan (seed, num_items, categories, ...): "
                             "use a new out_dir, or the original config")
        return plan_items([json.loads(line) for line in lines[1:]], config), header.get("stats", {})
    prompts, stats = build_prompts(config)
    temp = path.with_name(f".{PLAN_NAME}{TEMP_SUFFIX}")
    header = {"kind": PLAN_HEADER_KIND, "fingerprint": print_, "stats": stats}
    with open(temp, "w", encoding="utf-8") as stream:
        stream.write("\n".join(json.dumps(r) for r in [header, *prompts]) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)
    return plan_items(prompts, config), stats
