"""GenEval's official folder layout: `DIR/NNNNN/metadata.jsonl` + `DIR/NNNNN/samples/NNNNN.png`.

Only digit-named folders and digit-named PNGs are read, as the official evaluator does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PROMPT_DIGITS = 5
SAMPLE_DIGITS = 5
_DIGITS = re.compile(r"^\d+$")
_SAMPLE = re.compile(r"^\d+\.png$")


class MetadataError(ValueError):
    """A metadata file or line that cannot be used; the message names the file and line."""


def read_metadata_file(path: str | Path) -> list[dict]:
    """Every record of a GenEval metadata JSONL file (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: no such metadata file")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            records.append(parse_metadata_line(line, path, line_no))
    if not records:
        raise MetadataError(f"{path}: no metadata records")
    return records


def parse_metadata_line(line: str, path: Path, line_no: int) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        raise MetadataError(f"{path}:{line_no}: malformed JSON ({err.msg})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("include"), list) or "tag" not in rec:
        raise MetadataError(f"{path}:{line_no}: a GenEval record needs 'tag' and an 'include' list")
    return rec


def prompt_dir(root: Path, index: int) -> Path:
    return root / f"{index:0{PROMPT_DIGITS}d}"


def sample_path(root: Path, index: int, sample: int) -> Path:
    return prompt_dir(root, index) / "samples" / f"{sample:0{SAMPLE_DIGITS}d}.png"


def write_prompt_metadata(root: Path, index: int, rec: dict) -> Path:
    folder = prompt_dir(root, index)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
    return folder


@dataclass
class LayoutItem:
    """One image to score, or one folder that could not yield images (`error` set, `image` None)."""

    folder: Path
    metadata: dict
    filename: str
    image: Image.Image | None = None
    error: str = ""


def iter_layout(root: str | Path):
    """Yield a LayoutItem per sample image, and one failed item per folder without usable samples.

    Raises MetadataError for a missing or malformed metadata line (naming file and line): scores cannot
    be attributed without it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and _DIGITS.match(p.name)), key=lambda p: int(p.name))
    if not folders:
        raise FileNotFoundError(f"{root}: no prompt folders (expected {root}/00000/metadata.jsonl ...)")
    for folder in folders:
        meta_path = folder / "metadata.jsonl"
        if not meta_path.is_file():
            raise MetadataError(f"{meta_path}: missing")
        lines = meta_path.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0].strip():
            raise MetadataError(f"{meta_path}:1: empty metadata line")
        rec = parse_metadata_line(lines[0], meta_path, 1)
        samples_dir = folder / "samples"
        if not samples_dir.is_dir():
            yield LayoutItem(folder, rec, str(samples_dir), error="missing samples/ folder")
            continue
        pngs = sorted((p for p in samples_dir.iterdir() if _SAMPLE.match(p.name)), key=lambda p: int(p.stem))
        if not pngs:
            yield LayoutItem(folder, rec, str(samples_dir), error="no NNNNN.png images in samples/")
            continue
        for png in pngs:
            try:
                with Image.open(png) as image:
                    loaded = image.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                yield LayoutItem(folder, rec, str(png), error=f"unreadable image: {err}")
                continue
            yield LayoutItem(folder, rec, str(png), image=loaded)
