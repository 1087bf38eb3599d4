"""BLIP3-o's generation instruction and the words it adds to a caption.

The template writes the instruction and the mini tokenizer must know its words; both import them from here, so
neither imports the other.
"""

from __future__ import annotations

import re

GENERATION_INSTRUCTION = "please generate image based on the following caption:"  # BLIP3-o's instruction
# Words and each punctuation mark on their own: "circle?" -> "circle", "?" (the mini tokenizer splits the same way).
WORD_OR_PUNCTUATION = r"\w+|[^\w\s]"


def template_words() -> list[str]:
    """The words (and punctuation) the templates themselves add to captions, for the word-level tokenizer."""
    return sorted(set(re.findall(WORD_OR_PUNCTUATION, GENERATION_INSTRUCTION.lower())))
