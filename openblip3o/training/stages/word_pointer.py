"""Word pointing: one attention head is taught to carry the question's naming word to the answer position.

Why (measured 2026-12-05 on the shipped backbone, 2-object training scenes of two shapes and two colours): "what
shape is the red object?" was answered at chance between the two shapes (0.54 teacher-forced), while "what color is
the circle?" was right 0.84 of the time. No head attended more to the red object than to the other one, even with
the answer pointer supervising one for 200 steps; the image tokens name their colour linearly (1.00) and a fresh
bilinear head whose query is the word "red"'s own state finds the red object at 0.998 on unseen scenes, but with the
answer position's state as its query only at 0.52-0.73: the answer position did not carry the asked colour (linear
probe 0.5 after layers 2-4; the asked shape of a colour question 0.95-1.00). So the lookup lacks its query. Here, at
each position that predicts an answer's first token, head `head` of layer `layer` is asked to attend to the
question's colour and shape words (`question_targets.named_words`): the loss is -log that attention mass. Put it a
layer below the answer pointer, whose query then holds the word.
"""

from __future__ import annotations

import torch
from torch import nn

from ...data.shapes.question_targets import named_words
from .answer_pointer import AnswerPointer


class WordPointer(AnswerPointer):
    """An AnswerPointer whose targets are the question's naming words instead of the named objects' image tokens."""

    def __init__(self, qwen: nn.Module, layer: int, head: int, tokenizer, option: str = "word_pointer",
                 log_key: str = "word_pointer_mass"):
        super().__init__(qwen, layer, head, grid_size=0, option=option, log_key=log_key)
        self.tokenizer = tokenizer

    def targets(self, scenes, questions_per_row: list[list[str]]) -> list[list[list[list[int]]]]:
        """Per row, per question in the order asked: the token ids of each naming word (as it is tokenised inside a
        sentence, after a space). `scenes` is unused: the words come from the question alone."""
        del scenes
        return [[[self.tokenizer.encode(" " + word, add_special_tokens=False) for word in named_words(q)]
                 for q in questions] for questions in questions_per_row]

    def named_positions(self, ids: torch.Tensor, position: int, words: list[list[int]]) -> torch.Tensor | None:
        """The positions of each naming word's last occurrence at or before `position` (the question being
        answered comes last), or None when the question names no attribute or a word is not found."""
        found = []
        for word in words:
            start = _last_occurrence(ids[: position + 1].tolist(), word)
            if start is None:
                return None
            found.extend(range(start, start + len(word)))
        return torch.tensor(sorted(set(found)), device=ids.device) if found else None


def _last_occurrence(sequence: list[int], word: list[int]) -> int | None:
    """Start of the last occurrence of `word` (a token-id list) in `sequence`, or None."""
    for start in range(len(sequence) - len(word), -1, -1):
        if word and sequence[start : start + len(word)] == word:
            return start
    return None
