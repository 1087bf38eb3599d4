"""The `openblip3o curate` configuration: typed dataclasses, loaded strictly from YAML.

Strict like the rest of the project (`openblip3o.config.from_dict`): an unknown key or a wrong type is an error naming
the key. Endpoint settings may also come from the environment (`OPENBLIP3O_CURATE_BASE_URL`, `_MODEL`, `_API_KEY`) so
that a key never has to be written into a file; the key is kept out of `repr` so it cannot reach a log by accident.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, SamplingSettings, check_choice, from_dict

ENV_PREFIX = "OPENBLIP3O_CURATE_"
SCALES = ("full", "mini")  # full: the shipped BLIP3o-60k category table; mini: ShapesWorld's six GenEval tags
BACKENDS = ("http", "local", "render")  # render: ShapesWorld's exact renderer (mini scale only)


@dataclass
class EndpointConfig:
    """An OpenAI-compatible `/v1/images/generations` endpoint and how hard to push it."""

    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1 (env OPENBLIP3O_CURATE_BASE_URL)
    model: str | None = None  # sent as `model` when set (env OPENBLIP3O_CURATE_MODEL)
    api_key: str | None = field(default=None, repr=False)  # prefer env OPENBLIP3O_CURATE_API_KEY
    size: str | None = None  # e.g. "256x256"; None: the server's default
    extra_body: dict = field(default_factory=dict)  # non-standard fields, e.g. {steps: 30, guidance_scale: 3.0}
    concurrency: int = 4  # requests in flight at once
    rate_limit: float = 0.0  # requests per second, client side; 0: unlimited
    retries: int = 5  # further attempts after the first, on 429 / 5xx / timeouts / unusable bodies
    timeout_s: float = 120.0
    backoff_base_s: float = 0.5  # delay before retry k is about base * 2**k (with jitter), capped below
    backoff_max_s: float = 30.0


@dataclass
class ExpansionConfig:
    """Optional prompt expansion through an OpenAI-compatible `/v1/chat/completions` endpoint."""

    base_url: str | None = None  # None: no expansion
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)  # None: the image endpoint's key
    instruction: str = ("Rewrite the image prompt into one vivid, specific sentence. Keep every object, count, colour, "
                        "position and quoted text exactly. Reply with the prompt only.")
    max_chars: int = 300  # longer answers are cut at a word boundary; image servers limit prompt length


@dataclass
class DedupConfig:
    """Prompt de-duplication: exact after normalisation, then near-duplicates by character n-gram Jaccard."""

    near_threshold: float | None = 0.9  # None: exact only
    ngram: int = 5
    max_attempts_factor: int = 50  # give up after num_items * factor draws (small vocabularies run out)


@dataclass
class FilterConfig:
    min_size: int = 32  # the shorter image side, in pixels
    clip_score_min: float | None = None  # None: off; else a CLIP scorer must be available (local backend or hook)


@dataclass
class LocalConfig:
    """`--backend local`: a pipeline called directly, no server."""

    model: str = "mini"  # a preset name or a folder written by save_pretrained
    batch_size: int = 8
    steps: int | None = None  # None: the model's defaults
    guidance_scale: float | None = None
    decoder_steps: int | None = None
    decoder_guidance_scale: float | None = None

    @property
    def sampling(self) -> SamplingSettings:
        """These four keys (named as the YAML files write them) in the shape every pipeline call takes."""
        return SamplingSettings(self.steps, self.guidance_scale, self.decoder_steps, self.decoder_guidance_scale)


@dataclass
class CurateConfig:
    out_dir: str = "runs/curated"
    scale: str = "full"
    num_items: int = 64  # distinct prompts; each gets `images_per_prompt` images
    images_per_prompt: int = 1
    seed: int = 0
    categories: dict = field(default_factory=dict)  # name -> weight; empty: the table's (full) or all tags (mini)
    scores: str | None = None  # mini: evaluator summary JSON {"tags": {tag: score}} -> weights (1 - score) + floor
    shard_size: int = 256  # images per shard; a kill loses at most the unfinished shard's work
    retry_failed: bool = False  # rerun items the failure log already holds (their old entries are dropped)
    progress: bool = True
    backend: str = "http"
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    expansion: ExpansionConfig = field(default_factory=ExpansionConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    local: LocalConfig = field(default_factory=LocalConfig)

    def __post_init__(self):
        check_choice("scale", self.scale, SCALES)
        check_choice("backend", self.backend, BACKENDS)
        if self.backend == "render" and self.scale != "mini":
            raise ConfigError("backend 'render' draws ShapesWorld records: it needs scale 'mini'")
        for key, value, low in (("num_items", self.num_items, 1), ("images_per_prompt", self.images_per_prompt, 1),
                                ("shard_size", self.shard_size, 1), ("endpoint.concurrency", self.endpoint.concurrency, 1),
                                ("endpoint.retries", self.endpoint.retries, 0), ("local.batch_size", self.local.batch_size, 1),
                                ("dedup.ngram", self.dedup.ngram, 1)):
            if value < low:
                raise ConfigError(f"{key} must be at least {low}, got {value}")
        if self.endpoint.rate_limit < 0 or self.endpoint.timeout_s <= 0:
            raise ConfigError("endpoint.rate_limit must be >= 0 and endpoint.timeout_s > 0")
        threshold = self.dedup.near_threshold
        if threshold is not None and not 0 < threshold <= 1:
            raise ConfigError(f"dedup.near_threshold must be in (0, 1], got {threshold}")
        for name, weight in self.categories.items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise ConfigError(f"categories.{name}: expected a non-negative weight, got {weight!r}")

    def public_dict(self) -> dict:
        """The config as a dict with API keys blanked: safe to write into the manifest."""
        data = dataclasses.asdict(self)
        for section in ("endpoint", "expansion"):
            if data[section]["api_key"]:
                data[section]["api_key"] = "***"
        return data


def load_config(path: str | Path | None = None, **overrides) -> CurateConfig:
    """A config from a YAML file (or defaults), overridden by the environment, then by `overrides` (not None).

    Overrides are top-level keys plus `base_url`, `model`, `api_key` for the image endpoint.
    """
    import yaml

    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    config = from_dict(CurateConfig, data)
    for name in ("base_url", "model", "api_key"):  # precedence: options > environment > file
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env:
            setattr(config.endpoint, name, env)
    for name in ("base_url", "model", "api_key"):
        value = overrides.pop(name, None)
        if value is not None:
            setattr(config.endpoint, name, value)
    merged = {**dataclasses.asdict(config), **{k: v for k, v in overrides.items() if v is not None}}
    return from_dict(CurateConfig, merged)
