"""Tokenizers for the backbone: the ShapesWorld word-level tokenizer and the generation special tokens.

The mini backbone is a real `Qwen2_5_VLForConditionalGeneration` with a tiny vocabulary: every word ShapesWorld can say
(`vocabulary()`), the words of our prompt template, the chat role words, and Qwen's own special tokens under Qwen's own
names. Because the special tokens keep their names, every other module looks them up by name (`token_id`) and works
unchanged with a pretrained Qwen tokenizer. No token id is fixed anywhere: ids follow from the order built here.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..data.shapes.text import vocabulary
from .instruction import WORD_OR_PUNCTUATION, template_words

# Qwen2.5-VL's special tokens, by name (the same strings as in Qwen's own tokenizer).
PAD_TOKEN = "<|endoftext|>"  # Qwen pads with its end-of-text token
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # ends every chat turn; the end-of-sequence token for generation
EOS_TOKEN = IM_END
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"  # one per merged image patch, expanded by the processor
VIDEO_PAD = "<|video_pad|>"
UNK_TOKEN = "<unk>"  # the word-level model's unknown word (Qwen's byte-level BPE has none)

# Our generation tokens: GEN_START opens the query block, GEN_QUERY is the placeholder each learnable query replaces.
GEN_START = "<|gen_start|>"
GEN_QUERY = "<|gen_query|>"
GENERATION_TOKENS = (GEN_START, GEN_QUERY)

QWEN_SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
ROLE_WORDS = ("system", "user", "assistant")

# The decoder joins words with spaces; these marks attach to the word before them ("circle ." -> "circle.").
_ATTACHED_PUNCTUATION = (".", ",", "?", "!", ":", ";")

# Qwen's ChatML layout. Image parts render as Qwen2.5-VL renders them (one `<|image_pad|>`, expanded later by the
# processor to one token per merged patch). Unlike Qwen's template no default system turn is added: at mini scale it
# only lengthens every sequence; a system message is still rendered when given.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def shapes_words() -> list[str]:
    """Every ordinary word of the mini tokenizer, sorted: ShapesWorld's vocabulary, prompt words and role words."""
    return sorted(set(vocabulary()) | set(template_words()) | set(ROLE_WORDS))


def build_shapes_tokenizer() -> PreTrainedTokenizerFast:
    """The ShapesWorld word-level tokenizer, wrapped for `transformers`, with a ChatML chat template.

    Ids are deterministic: Qwen's special tokens first (in `QWEN_SPECIAL_TOKENS` order), then `<unk>`, then the sorted
    words. The generation tokens are not included; `add_generation_tokens` appends them (as for a pretrained Qwen).
    """
    names = [*QWEN_SPECIAL_TOKENS, UNK_TOKEN, *shapes_words()]
    vocab = {name: index for index, name in enumerate(names)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_OR_PUNCTUATION), behavior="isolated")]
    )
    # WordPiece's decoder joins tokens with spaces; the Replace steps glue punctuation back to the word before it.
    core.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=False)]
        + [decoders.Replace(f" {mark}", mark) for mark in _ATTACHED_PUNCTUATION]
    )
    # Special tokens are matched before normalisation and splitting, so "<|im_start|>" is never cut at "|".
    core.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def add_generation_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add GEN_START and GEN_QUERY as special tokens (idempotent); returns how many were new.

    Works on the mini tokenizer and on a pretrained Qwen tokenizer alike; the caller resizes the model's embeddings.
    """
    missing = [name for name in GENERATION_TOKENS if name not in tokenizer.get_vocab()]
    if not missing:
        return 0
    # replace_extra_special_tokens=False keeps Qwen's own extra special tokens registered.
    return tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)


def token_id(tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    """The id of special token `name`; a KeyError naming the token if the tokenizer lacks it."""
    vocab = tokenizer.get_vocab()
    if name not in vocab:
        hint = " (call add_generation_tokens first)" if name in GENERATION_TOKENS else ""
        raise KeyError(f"tokenizer {type(tokenizer).__name__} has no token {name!r}{hint}")
    return vocab[name]


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Ids of every special token the backbone needs, keyed by token string (all looked up by name)."""
    return {name: token_id(tokenizer, name) for name in (*QWEN_SPECIAL_TOKENS, *GENERATION_TOKENS)}
