"""`curate(config)`: the whole pipeline, resumable and idempotent.

    plan (prompts.jsonl, frozen)  ->  skip ids already in a shard or the failure log  ->  backend (HTTP or local)
    ->  filters (decodes, minimum size, optional CLIP score)  ->  shard (accepted) or failure log (everything else)
    ->  manifest.json (counts over the whole folder, plus this run's throughput)

Every planned item ends in exactly one place: a shard or the failure log. A rerun after a kill makes only the items
in neither, under the same ids and seeds, so it converges on the same set as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from .client import HttpBackend
from .config import CurateConfig
from .items import Item, Outcome
from .prompts import load_or_build_plan
from .writer import FailureLog, ShardWriter

MANIFEST_NAME = "manifest.json"
MANIFEST_KIND = "openblip3o-curation"
TEMP_SUFFIX = ".tmp"


def make_backend(config: CurateConfig, notes: Callable[[str], None] | None = None):
    if config.backend == "local":
        from .local import LocalBackend

        return LocalBackend(config.local, notes=notes)
    if config.backend == "render":
        from .render import RenderBackend

        return RenderBackend()
    return HttpBackend(config.endpoint)


def check(outcome: Outcome, config: CurateConfig, scorer) -> tuple[str | None, str, dict]:
    """(failure reason or None, detail, extra metadata) for one outcome after the filters."""
    if outcome.reason is not None:
        return outcome.reason, outcome.detail, {}
    if outcome.image is None or outcome.data is None:
        return "bad_image", "no image", {}
    width, height = outcome.image.size
    extra: dict = {"width": width, "height": height}
    if min(width, height) < config.filters.min_size:
        return "filtered_min_size", f"{width}x{height} is under {config.filters.min_size} px", extra
    if config.filters.clip_score_min is not None:
        score = float(scorer([outcome.image], [outcome.item.prompt])[0])
        extra["clip_score"] = round(score, 4)
        if score < config.filters.clip_score_min:
            return "filtered_clip_score", f"CLIP score {score:.2f} < {config.filters.clip_score_min}", extra
    return None, "", extra


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    temp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)


def build_manifest(config: CurateConfig, items: list[Item], writer: ShardWriter, failures: FailureLog,
                   plan_stats: dict, source: str, this_run: dict) -> dict:
    """Counts over the whole output folder (every run so far), per category and per failure reason."""
    planned = {i.id: i for i in items}
    accepted = [planned[i] for i in writer.done if i in planned]
    failed = [planned[i] for i in failures.entries if i in planned]
    per_category: dict[str, dict[str, int]] = {}
    for name, group in (("planned", items), ("accepted", accepted), ("failed", failed)):
        for cat, count in Counter(i.category for i in group).items():
            per_category.setdefault(cat, {"planned": 0, "accepted": 0, "failed": 0})[name] = count
    return {
        "kind": MANIFEST_KIND,
        "source_model": source,
        "prompts": len({i.index for i in items}),
        "planned": len(items),
        "accepted": len(accepted),
        "failed": len(failed),
        "missing": len(items) - len(accepted) - len(failed),
        "per_category": dict(sorted(per_category.items())),
        "failures": dict(sorted(Counter(failures.entries[i.id]["reason"] for i in failed).items())),
        "shards": sorted(set(writer.done.values())),
        "prompt_dedup": plan_stats,
        "this_run": this_run,
        "config": config.public_dict(),
    }


def curate(config: CurateConfig, backend=None, scorer=None, notes: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the curation described by `config`; return the manifest (also written to the out folder).

    `backend`: anything with `run(items) -> Iterator[Outcome]` and a `source` name (default: from the config).
    `scorer`: `(images, prompts) -> scores` for `filters.clip_score_min` (default with the local backend: the
    pipeline's own target encoder).
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, plan_stats = load_or_build_plan(config, out)
    if plan_stats.get("exhausted") and notes:
        notes(f"note: only {len({i.index for i in items})} distinct prompts after de-duplication "
              f"(asked for {config.num_items}): the categories' vocabulary is too small")
    writer, failures = ShardWriter(out, config.shard_size), FailureLog(out)
    if config.retry_failed:
        failures.drop(set(failures.entries))
    todo = [i for i in items if i.id not in writer.done and i.id not in failures.entries]
    this_run = {"attempted": len(todo), "accepted": 0, "failed": 0, "requests": 0, "seconds": 0.0, "items_per_s": 0.0}
    if todo:
        backend = backend or make_backend(config, notes)
        if config.filters.clip_score_min is not None and scorer is None:
            if not hasattr(backend, "pipe"):
                raise ValueError("filters.clip_score_min needs a CLIP scorer: use --backend local, or pass scorer=")
            from .local import target_encoder_scorer

            scorer = target_encoder_scorer(backend.pipe)
        source = backend.source
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="curate", unit="img",
                   disable=not config.progress)
        start = time.monotonic()
        try:
            for outcome in backend.run(todo):
                reason, detail, extra = check(outcome, config, scorer)
                this_run["requests"] += outcome.attempts
                if reason is None:
                    item = outcome.item
                    meta = {"id": item.id, "prompt": item.prompt, "category": item.category, "source_model": source,
                            "seed": item.seed, "index": item.index, "time": time.time(), **extra}
                    if item.metadata is not None:
                        meta["metadata"] = item.metadata
                    writer.add(item, outcome.data, outcome.ext, meta)
                    this_run["accepted"] += 1
                else:
                    failures.record(outcome.item, reason, detail, outcome.attempts)
                    this_run["failed"] += 1
                bar.set_postfix(failed=this_run["failed"], refresh=False)
                bar.update()
        finally:  # also on Ctrl-C: the buffered images are finished work, keep them
            writer.close()
            failures.close()
            bar.close()
        seconds = time.monotonic() - start
        this_run.update(seconds=round(seconds, 3), items_per_s=round(len(todo) / seconds, 3) if seconds else 0.0)
    else:
        if backend is not None:
            source = backend.source
        elif config.backend == "local":
            source = f"local:{config.local.model}"
        elif config.backend == "render":
            from .render import SOURCE as source
        else:
            source = config.endpoint.model or config.endpoint.base_url or ""
        writer.close()
    manifest = build_manifest(config, items, writer, failures, plan_stats, source, this_run)
    _write_json(out / MANIFEST_NAME, manifest)
    return manifest
