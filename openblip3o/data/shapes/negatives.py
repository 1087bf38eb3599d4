"""Binding negatives: a caption with two of its colour words (or two of its shape words) exchanged.

"a red cross and a blue star" -> "a blue cross and a red star"; "a cross left of a star" -> "a star left of a
cross". The negative has the caption's words (a plural shape keeps its number, so in "two crosses and a circle" the
count moves with the shape), so a model that reads its condition as a bag of words can hardly tell the two apart;
it describes a different image, so a model that binds each word to its object can. The
generation stage's binding loss (`generation_binding_weight`) asks the DiT to explain an image worse from its
negative than from its caption.
"""

from __future__ import annotations

import random
import re

from .world import COLORS, SHAPES, article, plural

_WORD = re.compile(r"[a-z]+")
_ARTICLE = re.compile(r"\b(a|an) ([a-z]+)")
_SHAPE_FORMS = {**{shape: (shape, False) for shape in SHAPES}, **{plural(shape): (shape, True) for shape in SHAPES}}


def _distinct(words: list[str], vocabulary) -> list[str]:
    seen: list[str] = []
    for word in words:
        if word in vocabulary and word not in seen:
            seen.append(word)
    return seen


def _exchange(caption: str, first: str, second: str, forms: dict[str, tuple[str, bool]] | None = None) -> str:
    """Every occurrence of `first` becomes `second` and vice versa (a shape keeps its number), articles fixed."""
    def swap(match: re.Match) -> str:
        word = match.group(0)
        base, is_plural = forms.get(word, (word, False)) if forms else (word, False)
        if base not in (first, second):
            return word
        other = second if base == first else first
        return plural(other) if is_plural else other

    exchanged = _WORD.sub(swap, caption)
    return _ARTICLE.sub(lambda m: f"{article(m.group(2))} {m.group(2)}", exchanged)


def binding_negative(caption: str, rng: random.Random) -> str | None:
    """The caption with its first two distinct colour words, or its first two distinct shapes, exchanged everywhere
    (each kind chosen with equal chance where both are possible); None when it names fewer than two of either."""
    words = _WORD.findall(caption.lower())
    colours = _distinct(words, COLORS)
    shapes = _distinct([_SHAPE_FORMS[w][0] if w in _SHAPE_FORMS else w for w in words], SHAPES)
    kinds = [kind for kind, names in (("colour", colours), ("shape", shapes)) if len(names) >= 2]
    if not kinds:
        return None
    if rng.choice(kinds) == "colour":
        return _exchange(caption.lower(), colours[0], colours[1])
    return _exchange(caption.lower(), shapes[0], shapes[1], _SHAPE_FORMS)
