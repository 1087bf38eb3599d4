"""An lmms-eval model adapter: `lmms-eval --model openblip3o --model_args pretrained=DIR ...`.

It follows lmms-eval's `lmms` model API: `generate_until(requests)` answers each request, whose `args` are
`(context, gen_kwargs, doc_to_visual, doc_id, task, split)`; the images come from
`doc_to_visual(self.task_dict[task][split][doc_id])` (lmms-eval sets `task_dict` on the model before it runs).
`loglikelihood` (multiple-choice by likelihood) is not supported and says so.

lmms-eval is imported lazily: when it is installed, the class subclasses its `lmms` base and registers itself
under the name `openblip3o`; without it the adapter still works on any objects shaped like its requests (this
is how the tests call it, with no dataset download). lmms-eval pins its own torch, so it is not a dependency:
install it in an environment of its own and run `python -m openblip3o.evaluation.lmms_adapter --model openblip3o
--tasks mme ...` (this registers the model, then hands over to lmms-eval's command line).
"""

from __future__ import annotations

import sys

MODEL_NAME = "openblip3o"
DEFAULT_MAX_NEW_TOKENS = 16
IMAGE_TOKENS = ("<image>", "<image 1>")  # placeholders some tasks leave in the context


def _lmms_base() -> type:
    try:
        from lmms_eval.api.model import lmms

        return lmms
    except Exception:  # not installed, or an incompatible version: duck-typed adapter
        return object


_BASE = _lmms_base()


class OpenBLIP3oLMM(_BASE):
    """lmms-eval model `openblip3o`: image question answering with `BLIP3oPipeline.answer`."""

    def __init__(self, pretrained: str = "mini", batch_size: int | str = 1, device: str = "cpu",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, pipeline=None, **kwargs):
        if _BASE is not object:
            super().__init__()
        if pipeline is None:
            from ..inference.pipeline import BLIP3oPipeline

            pipeline = BLIP3oPipeline.from_pretrained(pretrained).to(device)
        self.pipe = pipeline
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.task_dict: dict = getattr(self, "task_dict", {}) or {}
        self.ignored_model_args = kwargs  # lmms-eval passes extra model_args; they do not apply here

    # lmms-eval reads these for distributed bookkeeping; the adapter runs in one process.
    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @staticmethod
    def _question(context: str) -> str:
        for token in IMAGE_TOKENS:
            context = context.replace(token, " ")
        return " ".join(context.split())

    def _visual(self, doc_to_visual, doc_id, task, split):
        try:
            doc = self.task_dict[task][split][doc_id]
        except (KeyError, IndexError, TypeError):
            raise KeyError(f"lmms-eval request for {task}/{split}/{doc_id}: no such document in task_dict") from None
        visuals = [v for v in (doc_to_visual(doc) or []) if v is not None]
        if not visuals:
            raise ValueError(f"{task}/{split}/{doc_id}: the document has no image; openblip3o answers about images")
        return visuals[0].convert("RGB")  # the mini backbone reads one image per question

    def generate_until(self, requests) -> list[str]:
        """One answer per request, batched `batch_size` at a time, cut at the first `until` string."""
        answers: list[str] = []
        requests = list(requests)
        for first in range(0, len(requests), self.batch_size):
            chunk = [r.args for r in requests[first : first + self.batch_size]]
            images = [self._visual(dv, doc_id, task, split) for _, _, dv, doc_id, task, split in chunk]
            questions = [self._question(context) for context, *_ in chunk]
            tokens = max(int((kw or {}).get("max_new_tokens", self.max_new_tokens)) for _, kw, *_ in chunk)
            outputs = self.pipe.answer(images, questions, max_new_tokens=tokens)
            for (_, gen_kwargs, *_), text in zip(chunk, outputs):
                until = (gen_kwargs or {}).get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop:
                        text = text.split(stop)[0]
                answers.append(text.strip())
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "openblip3o does not score continuations by log-likelihood; use tasks with output_type "
            "generate_until (e.g. mme, mmbench, mmmu_val in their generation form)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("openblip3o answers single-turn questions only")


def register() -> type:
    """Register the adapter under `openblip3o` in lmms-eval's model registry (lmms-eval must be installed)."""
    from lmms_eval.api.registry import MODEL_REGISTRY, register_model

    if MODEL_NAME not in MODEL_REGISTRY:
        register_model(MODEL_NAME)(OpenBLIP3oLMM)
    return OpenBLIP3oLMM


try:  # registration at import time when lmms-eval is present, so `--model openblip3o` resolves
    register()
except Exception:  # lmms-eval absent or with another registry API: the class stays usable directly
    pass


def main() -> None:
    """`python -m openblip3o.evaluation.lmms_adapter <lmms-eval arguments>`."""
    try:
        from lmms_eval.__main__ import cli_evaluate
    except ImportError:
        sys.exit("lmms-eval is not installed: pip install lmms-eval (in an environment whose torch it may change)")
    register()
    cli_evaluate()


if __name__ == "__main__":
    main()
