"""WISE (legacy protocol): `{prompt_id}.png` from the official prompt files, judged through any OpenAI-compatible
chat endpoint.

The official prompt files are `data/{cultural_common_sense,spatio-temporal_reasoning,natural_science}.json`: lists
of objects with `prompt_id`, `Prompt`, `Explanation` (and category fields). One image per prompt. The judge (GPT-4o
in the paper, temperature 0) gives Consistency, Realism and Aesthetic Quality, each 0-2, parsed by regex;
WiScore = (0.7 C + 0.2 R + 0.1 A) / 2 in [0, 1]. Categories follow the prompt ids (1-400 Cultural, 401-567 Time,
568-700 Space, 701-800 Biology, 801-900 Physics, 901-1000 Chemistry); overall = 0.4 Cultural + 0.167 Time +
0.133 Space + 0.1 (Biology + Physics + Chemistry). Answers without all three scores are counted as `unparsed`
and left out of the means (reported, never silently dropped).
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..config import SamplingSettings

SETTINGS_FILE = "settings.json"
JUDGEMENTS_FILE = "wise_judgements.jsonl"
SUMMARY_FILE = "wise_summary.json"
SCORE_KEYS = ("consistency", "realism", "aesthetic_quality")
WISCORE_WEIGHTS = {"consistency": 0.7, "realism": 0.2, "aesthetic_quality": 0.1}
MAX_SCORE = 2  # each judged score is 0, 1 or 2
# (last prompt id of the category, category), in id order.
CATEGORY_RANGES = ((400, "Cultural"), (567, "Time"), (700, "Space"), (800, "Biology"), (900, "Physics"),
                   (1000, "Chemistry"))
CATEGORY_WEIGHTS = {"Cultural": 0.4, "Time": 0.167, "Space": 0.133, "Biology": 0.1, "Physics": 0.1, "Chemistry": 0.1}
SCORE_PATTERN = re.compile(r"\*{0,2}(consistency|realism|aesthetic[ _]quality)\*{0,2}\s*[:：]?\s*\*{0,2}\s*(\d)",
                           re.IGNORECASE)
DEFAULT_JUDGE_MODEL = "gpt-4o-2024-05-13"
REQUEST_TIMEOUT_S = 120
MAX_ATTEMPTS = 3
RETRY_BACKOFF_S = 2.0

JUDGE_SYSTEM = "You are a strict, professional auditor of text-to-image generation quality."
JUDGE_TEMPLATE = """Rate the image for the prompt below. The explanation states what a knowledgeable artist
would draw; judge against it.

PROMPT: {prompt}
EXPLANATION: {explanation}

Give three integer scores from 0 to 2:
- Consistency: 2 = the image shows exactly what the explanation implies; 1 = partly; 0 = not at all.
- Realism: 2 = physically and visually plausible; 1 = noticeable flaws; 0 = implausible.
- Aesthetic Quality: 2 = well composed and appealing; 1 = ordinary; 0 = poor.

Answer in exactly this format and nothing else:
Consistency: <0-2>
Realism: <0-2>
Aesthetic Quality: <0-2>"""


class JudgeError(RuntimeError):
    """The judge endpoint could not be reached or answered malformed JSON."""


def category_of(prompt_id: int) -> str:
    for last, name in CATEGORY_RANGES:
        if prompt_id <= last:
            return name
    raise ValueError(f"prompt_id {prompt_id} is outside WISE's 1-1000")


def load_prompts(paths: list[str | Path] | str | Path) -> list[dict]:
    """Records from official WISE JSON files (or a folder of them): each needs `prompt_id` and `Prompt`."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.glob("*.json") if "rewrite" not in p.name)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such WISE prompt file or folder")
    if not files:
        raise FileNotFoundError(f"{', '.join(map(str, paths))}: no WISE JSON prompt files")
    records, seen = [], set()
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: malformed JSON ({err.msg})") from None
        for n, rec in enumerate(data if isinstance(data, list) else [], start=1):
            if not isinstance(rec, dict) or "prompt_id" not in rec or not rec.get("Prompt"):
                raise ValueError(f"{file}: record {n} needs 'prompt_id' and 'Prompt'")
            pid = int(rec["prompt_id"])
            if pid in seen:
                raise ValueError(f"{file}: duplicate prompt_id {pid}")
            seen.add(pid)
            records.append({**rec, "prompt_id": pid})
    return sorted(records, key=lambda r: r["prompt_id"])


def generate_wise(pipe, records: list[dict], out_dir: str | Path, seed: int = 42, batch_size: int = 16,
                  sampling: SamplingSettings = SamplingSettings(), progress: bool = True) -> dict:
    """One `{prompt_id}.png` per record (every image seeded `seed`); prompts already done are skipped."""
    from tqdm import tqdm

    from .geneval.generate import resolved_sampling, run_settings

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"benchmark": "wise", **run_settings(pipe, seed, len(records), sampling)}
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    todo = [r for r in records if not (out / f"{r['prompt_id']}.png").is_file()]
    for first in tqdm(range(0, len(todo), batch_size), desc="wise", unit="batch", disable=not progress):
        chunk = todo[first : first + batch_size]
        images = pipe([r["Prompt"] for r in chunk], generator=[torch.Generator().manual_seed(seed) for _ in chunk],
                      **resolved_sampling(settings), progress=False).images
        for rec, image in zip(chunk, images):
            tmp = out / f".{rec['prompt_id']}.png.tmp"
            image.save(tmp, format="PNG")
            tmp.replace(out / f"{rec['prompt_id']}.png")
    return settings


def parse_scores(text: str) -> dict[str, int] | None:
    """The three 0-2 scores from a judge's answer (markdown bold and full-width colons allowed); None if any is
    missing or out of range. The first occurrence of each key counts."""
    scores: dict[str, int] = {}
    for key, value in SCORE_PATTERN.findall(text or ""):
        name = key.lower().replace(" ", "_")
        scores.setdefault(name, int(value))
    if set(scores) != set(SCORE_KEYS) or any(v > MAX_SCORE for v in scores.values()):
        return None
    return scores


def wiscore(scores: dict[str, int]) -> float:
    """(0.7 Consistency + 0.2 Realism + 0.1 Aesthetic) / 2, in [0, 1]."""
    return sum(WISCORE_WEIGHTS[k] * scores[k] for k in SCORE_KEYS) / MAX_SCORE


def summarize(judgements: list[dict]) -> dict:
    """Per-category mean WiScore and the weighted overall (weights renormalised over the categories present)."""
    by_category: dict[str, list[float]] = {}
    for row in judgements:
        if row.get("wiscore") is not None:
            by_category.setdefault(row["category"], []).append(row["wiscore"])
    categories = {c: sum(v) / len(v) for c, v in by_category.items()}
    categories = {c: categories[c] for c in CATEGORY_WEIGHTS if c in categories}
    weight = sum(CATEGORY_WEIGHTS[c] for c in categories)
    overall = sum(CATEGORY_WEIGHTS[c] * s for c, s in categories.items()) / weight if weight else 0.0
    scored = [r["wiscore"] for r in judgements if r.get("wiscore") is not None]
    return {"overall": overall, "categories": categories, "mean_wiscore": sum(scored) / len(scored) if scored else 0.0,
            "images": len(judgements), "judged": len(scored), "unparsed": len(judgements) - len(scored)}


class ChatJudge:
    """A vision chat model behind any OpenAI-compatible `/chat/completions` endpoint (temperature 0)."""

    def __init__(self, base_url: str, model: str = DEFAULT_JUDGE_MODEL, api_key: str | None = None,
                 timeout: float = REQUEST_TIMEOUT_S, attempts: int = MAX_ATTEMPTS):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.attempts = model, api_key, timeout, attempts

    def request_body(self, record: dict, image_png: bytes) -> dict:
        text = JUDGE_TEMPLATE.format(prompt=record["Prompt"], explanation=record.get("Explanation", ""))
        image_url = "data:image/png;base64," + base64.b64encode(image_png).decode("ascii")
        return {"model": self.model, "temperature": 0, "messages": [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": image_url}}]}]}

    def __call__(self, record: dict, image_png: bytes) -> str:
        data = json.dumps(self.request_body(record, image_png)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.attempts):
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if err.code < 500 and err.code != 429:
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                last = str(err)
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                raise JudgeError(f"{self.url}: malformed chat completion ({err})") from None
            if attempt + 1 < self.attempts:
                time.sleep(RETRY_BACKOFF_S * (attempt + 1))
        raise JudgeError(f"{self.url}: {last}")


def judge_folder(image_dir: str | Path, records: list[dict], judge, workers: int = 4, progress: bool = True) -> dict:
    """Judge every `{prompt_id}.png`; resumable through `wise_judgements.jsonl`; writes and returns the summary.

    A missing image is a judged zero (as a failed generation would be), with its reason recorded.
    """
    from tqdm import tqdm

    root = Path(image_dir)
    done: dict[int, dict] = {}
    path = root / JUDGEMENTS_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["prompt_id"]] = row

    def one(rec: dict) -> dict:
        pid = rec["prompt_id"]
        row = {"prompt_id": pid, "category": category_of(pid), "prompt": rec["Prompt"]}
        image = root / f"{pid}.png"
        if not image.is_file():
            return row | {"scores": dict.fromkeys(SCORE_KEYS, 0), "wiscore": 0.0, "error": f"{image.name} missing"}
        answer = judge(rec, image.read_bytes())
        scores = parse_scores(answer)
        return row | {"answer": answer, "scores": scores, "wiscore": wiscore(scores) if scores else None}

    todo = [r for r in records if r["prompt_id"] not in done]
    with path.open("a", encoding="utf-8") as handle, ThreadPoolExecutor(max(1, workers)) as pool:
        for row in tqdm(pool.map(one, todo), total=len(todo), desc="judging", unit="img", disable=not progress):
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            done[row["prompt_id"]] = row
    wanted = {r["prompt_id"] for r in records}
    summary = summarize([done[p] for p in sorted(wanted)])
    (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
