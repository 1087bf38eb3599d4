"""The backbone with a tiny real Qwen2.5-VL: tokenizer, the one template, queries, VQA, save/load (CPU, < 60 s)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from openblip3o.config import BackboneConfig, ConfigError
from openblip3o.data.shapes.examples import ShapesWorld
from openblip3o.models.backbone import QUERIES_FILE, Backbone, BackboneLoadError
from openblip3o.models.qwen_setup import qwen_config
from openblip3o.models.template import (
    IGNORE_INDEX,
    generation_inputs,
    understanding_inputs,
    understanding_prompts,
)
from openblip3o.models.tokenizer import (
    EOS_TOKEN,
    GEN_QUERY,
    GEN_START,
    IM_END,
    IM_START,
    IMAGE_PAD,
    PAD_TOKEN,
    QWEN_SPECIAL_TOKENS,
    UNK_TOKEN,
    add_generation_tokens,
    build_shapes_tokenizer,
    token_id,
)

NUM_QUERIES = 8
IMAGE_SIZE = 64
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,  # head_dim 16: mrope_section sums to 8
    num_key_value_heads=2,
    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
)
VISION = dict(
    depth=1,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    patch_size=8,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=IMAGE_SIZE,  # pixels: one window covers the image
    fullatt_block_indexes=[0],
)
PROMPTS = [
    "a red circle",
    "two blue squares on the left and a small green triangle at the top",
    "a photo of three stars",
    "four shapes on a black background: a small red circle on the left, a large blue square on the right.",
]


def make_cfg(**overrides) -> BackboneConfig:
    base = BackboneConfig(text=dict(TEXT), vision=dict(VISION), image_size=IMAGE_SIZE, num_queries=NUM_QUERIES)
    return dataclasses.replace(base, max_prompt_tokens=96, **overrides)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one core per test run
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone.from_config(make_cfg()).eval()


@pytest.fixture(scope="module")
def vqa():
    world = ShapesWorld("train", seed=0)
    examples = [world[i] for i in range(4)]
    pairs = [ex.annotation["vqa"][i % len(ex.annotation["vqa"])] for i, ex in enumerate(examples)]
    return [ex.image for ex in examples], [p["question"] for p in pairs], [p["answer"] for p in pairs]


# ------------------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_special_tokens_by_name_and_round_trip():
    tok = build_shapes_tokenizer()
    assert tok.get_vocab() == build_shapes_tokenizer().get_vocab()  # deterministic ids
    for name in QWEN_SPECIAL_TOKENS:
        assert tok.convert_ids_to_tokens(token_id(tok, name)) == name
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
    with pytest.raises(KeyError, match="gen_query"):
        token_id(tok, GEN_QUERY)
    before = len(tok)
    assert add_generation_tokens(tok) == 2 and add_generation_tokens(tok) == 0
    assert len(tok) == before + 2
    assert {token_id(tok, GEN_START), token_id(tok, GEN_QUERY)} == {before, before + 1}

    text = (
        "two shapes on a black background: a small red circle on the left, a large blue square."
        " is the circle left of the square?"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert token_id(tok, UNK_TOKEN) not in ids
    assert tok.decode(ids) == text
    assert tok.decode(tok("A Red CIRCLE.")["input_ids"]) == "a red circle."  # lower-cased
    chat = f"{IM_START}user\n{GEN_START}{GEN_QUERY}{IM_END}"
    pieces = tok.convert_ids_to_tokens(tok(chat)["input_ids"])
    assert pieces == [IM_START, "user", GEN_START, GEN_QUERY, IM_END]  # special tokens are never split
    assert token_id(tok, UNK_TOKEN) in tok("zebra")["input_ids"]


def test_every_shapes_world_text_tokenises_without_unk(heldout_records):
    tok = build_shapes_tokenizer()
    texts = [rec["prompt"] for rec in heldout_records]
    for split in ("train", "eval", "heldout"):
        world = ShapesWorld(split, seed=1)
        for i in range(200):
            ann = world[i].annotation
            texts += [*ann["captions"].values(), ann["prompt"]]
            texts += [p[k] for p in ann["vqa"] for k in ("question", "answer")]
    unk = token_id(tok, UNK_TOKEN)
    bad = [t for t in texts if unk in tok(t, add_special_tokens=False)["input_ids"]]
    assert not bad, bad[:5]


def test_chat_template_renders_images_and_generation_prompt():
    tok = build_shapes_tokenizer()
    (prompt,) = understanding_prompts(tok, ["what color is the circle?"])
    assert prompt == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what color is the circle?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# ------------------------------------------------------------------------------------------------------ template
def test_generation_inputs_left_padded_queries_last_and_truncated():
    tok = build_shapes_tokenizer()
    add_generation_tokens(tok)
    limit = 24  # the longest prompt needs more
    batch = generation_inputs(tok, PROMPTS, NUM_QUERIES, max_length=limit)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[1] <= limit + 1 + NUM_QUERIES
    assert (ids[:, -NUM_QUERIES:] == token_id(tok, GEN_QUERY)).all()
    assert (ids[:, -NUM_QUERIES - 1] == token_id(tok, GEN_START)).all()
    assert (mask[:, -NUM_QUERIES - 1 :] == 1).all() and (mask[:, 0] == 0).any()  # left padding
    assert ((ids == token_id(tok, PAD_TOKEN)) == (mask == 0)).all()
    assert mask.sum(1).tolist()[3] == limit + 1 + NUM_QUERIES  # the long prompt was cut to the limit...
    row = tok.convert_ids_to_tokens(ids[3, -NUM_QUERIES - 4 : -NUM_QUERIES - 1])
    assert row == [IM_END, IM_START, "assistant"]  # ...from its text, never the template's end or the queries
    with pytest.raises(ValueError, match="empty"):
        generation_inputs(tok, [], NUM_QUERIES, limit)
    with pytest.raises(ValueError, match="max_length"):
        generation_inputs(tok, PROMPTS, NUM_QUERIES, 3)


def test_understanding_inputs_labels_only_answer_and_im_end(backbone, vqa):
    images, questions, answers = vqa
    tok = backbone.tokenizer
    batch = understanding_inputs(backbone.processor, images, questions, answers)
    assert batch["image_grid_thw"].shape == (len(images), 3)
    assert (batch["mm_token_type_ids"] == 1).sum() == (batch["input_ids"] == token_id(tok, IMAGE_PAD)).sum() > 0
    for row, labels, answer in zip(batch["input_ids"], batch["labels"], answers):
        kept = row[labels != IGNORE_INDEX]
        assert tok.convert_ids_to_tokens(kept[-1:]) == [IM_END]
        assert tok.decode(kept[:-1]) == answer
    generation = understanding_inputs(backbone.processor, images, questions)
    assert "labels" not in generation and (generation["attention_mask"][:, -1] == 1).all()  # left padded


def test_follow_up_turns_label_every_answer_and_keep_the_first_turn(backbone, vqa):
    images, questions, answers = vqa
    tok = backbone.tokenizer
    follow_ups = [[(q, a)] * (i % 3) for i, (q, a) in enumerate(zip(questions[::-1], answers[::-1]))]
    single = understanding_inputs(backbone.processor, images, questions, answers)
    multi = understanding_inputs(backbone.processor, images, questions, answers, follow_ups)
    for i, turns in enumerate(follow_ups):
        n = int(single["attention_mask"][i].sum())
        assert torch.equal(multi["input_ids"][i, :n], single["input_ids"][i, :n])  # inference's row is the start
        kept = multi["input_ids"][i][multi["labels"][i] != IGNORE_INDEX]
        assert tok.decode(kept) == tok.decode(tok(" ".join(f"{a} {IM_END}" for a in [answers[i]] + [a for _, a in turns]),
                                                  add_special_tokens=False)["input_ids"])
        real = multi["input_ids"][i][multi["attention_mask"][i] == 1]
        assert (real == token_id(tok, IM_END)).sum() == 2 + 2 * len(turns)  # each question turn and each answer closed
    with pytest.raises(ValueError, match="follow-up"):
        understanding_inputs(backbone.processor, images, questions, None, follow_ups)


# ------------------------------------------------------------------------------------------------------ generation path
def test_condition_shapes_and_no_lm_head(backbone):
    def refuse(*_):
        raise AssertionError("lm_head must not run on the generation path")

    handle = backbone.model.lm_head.register_forward_hook(refuse)
    try:
        cond, mask = backbone.condition(PROMPTS[:2])
    finally:
        handle.remove()
    assert cond.shape == (2, NUM_QUERIES, backbone.condition_dim) and backbone.condition_dim == backbone.hidden_size
    assert mask.shape == (2, NUM_QUERIES) and bool(mask.all())
    assert torch.isfinite(cond).all()
    identity = Backbone.from_config(make_cfg(projector="identity"))
    assert isinstance(identity.projector, torch.nn.Identity) and identity.condition_dim == identity.hidden_size


def test_condition_embeddings_put_the_template_words_before_the_queries(tmp_path):
    torch.manual_seed(0)
    words = Backbone.from_config(make_cfg(condition_embeddings=True)).eval()
    ids, id_mask = words.generation_ids(PROMPTS[:3])
    with torch.no_grad():
        cond, mask = words.condition(PROMPTS[:3])
    assert cond.shape == (3, ids.shape[1], words.condition_dim) and torch.equal(mask, id_mask)
    # The query part is the plain condition: the same projector over the same query states.
    words.word_projector, keep = None, words.word_projector
    with torch.no_grad():
        assert torch.allclose(words.condition(PROMPTS[:3])[0], cond[:, -NUM_QUERIES:], atol=1e-6)
    words.word_projector = keep
    # One word apart: the word part differs at that word's position; a row is the same in a batch as alone.
    with torch.no_grad():
        red, blue = words.condition(["a photo of a red circle", "a photo of a blue circle"])[0]
        alone = words.condition([PROMPTS[0]])
    assert (red[:-NUM_QUERIES] - blue[:-NUM_QUERIES]).norm(dim=-1).gt(1e-3).sum() == 1
    length = int(alone[1].sum())
    assert torch.allclose(cond[0][mask[0].bool()], alone[0][0][-length:], atol=1e-5)
    # Saved and loaded with its word projector; a checkpoint without it is refused, not silently half-loaded.
    words.save_pretrained(tmp_path / "words")
    loaded = Backbone.from_pretrained(tmp_path / "words", words.cfg).eval()
    with torch.no_grad():
        assert torch.equal(loaded.condition(PROMPTS[:3])[0], cond)
    with pytest.raises(BackboneLoadError, match="word_projector"):
        Backbone.from_pretrained(tmp_path / "words", make_cfg())


@pytest.mark.parametrize("layer", [2, -1])
def test_condition_word_layer_binds_each_word_to_those_before_it(layer):
    """Input embeddings (layer 0) make a prompt and its colours exchanged the same bag of word rows; the language
    model's states at a layer (the `condition_word_layer` lever against bag-of-words binding) tell them apart at
    the words after the first change, and leave the query part and everything before it as it was."""
    torch.manual_seed(0)
    flat = Backbone.from_config(make_cfg(condition_embeddings=True)).eval()
    deep = Backbone.from_config(make_cfg(condition_embeddings=True, condition_word_layer=layer)).eval()
    deep.load_state_dict(flat.state_dict())
    pair = ["a photo of a red cross and a blue star", "a photo of a blue cross and a red star"]
    with torch.no_grad():
        (flat_a, flat_b), (deep_a, deep_b) = flat.condition(pair)[0], deep.condition(pair)[0]
    words = slice(0, -NUM_QUERIES)
    unmatched = torch.cdist(flat_a[words], flat_b[words]).min(dim=1).values  # each row's nearest row of the other
    assert unmatched.max() < 1e-5  # the same rows, rearranged
    changed = (deep_a[words] - deep_b[words]).norm(dim=-1).gt(1e-4)
    first = int(changed.nonzero()[0])  # "red" / "blue": nothing before it differs, every word after it does
    assert not changed[:first].any() and changed[first:].all()
    assert torch.allclose(deep_a[-NUM_QUERIES:], flat_a[-NUM_QUERIES:], atol=1e-6)  # the query part is unchanged
    with pytest.raises(ConfigError, match="condition_word_layer"):
        Backbone.from_config(make_cfg(condition_embeddings=True, condition_word_layer=99))


def test_condition_state_layer_follows_the_words_and_word_dropout_hides_them_in_training_only(tmp_path):
    """`condition_state_layer` appends the states at a layer (own projector) after the embedding part; with
    `condition_word_dropout` a training row loses its whole embedding part (zeroed and masked), never the states or
    the queries, and an eval row never does."""
    torch.manual_seed(0)
    flat = Backbone.from_config(make_cfg(condition_embeddings=True)).eval()
    deep = Backbone.from_config(make_cfg(condition_embeddings=True, condition_word_layer=1)).eval()
    both = Backbone.from_config(make_cfg(condition_embeddings=True, condition_state_layer=1,
                                         condition_word_dropout=0.5)).eval()
    deep.load_state_dict(flat.state_dict())
    both.load_state_dict(flat.state_dict(), strict=False)
    both.state_projector.load_state_dict(flat.word_projector.state_dict())
    ids, id_mask = both.generation_ids(PROMPTS[:3])
    words = ids.shape[1] - NUM_QUERIES
    with torch.no_grad():
        cond, mask = both.condition(PROMPTS[:3])
        flat_cond, deep_cond = flat.condition(PROMPTS[:3])[0], deep.condition(PROMPTS[:3])[0]
    assert cond.shape == (3, 2 * words + NUM_QUERIES, both.condition_dim)
    assert torch.equal(mask, torch.cat([id_mask[:, :words], id_mask], dim=1))
    assert torch.allclose(cond[:, :words], flat_cond[:, :words], atol=1e-6)  # the embeddings
    assert torch.allclose(cond[:, words:], deep_cond, atol=1e-5)  # then the layer-1 states and the queries
    batch = ["a photo of a red cross and a blue star"] * 64
    with torch.no_grad():
        assert torch.equal(both.condition(batch)[0], both.condition(batch)[0])  # eval: nothing dropped
        both.train()
        dropped, dropped_mask = both.condition(batch)
        both.eval()
    words = (dropped.shape[1] - NUM_QUERIES) // 2
    hidden = dropped_mask[:, :words].sum(dim=1) == 0
    assert 10 < int(hidden.sum()) < 54  # about half of 64 rows
    assert dropped[hidden, :words].abs().max() == 0 and dropped[~hidden, :words].abs().amin(dim=-1).gt(0).any()
    assert bool(dropped_mask[:, words:].all())  # the states and queries of every row stay
    # Saved and loaded with both projectors; a checkpoint without the state projector is refused.
    both.save_pretrained(tmp_path / "both")
    loaded = Backbone.from_pretrained(tmp_path / "both", both.cfg).eval()
    with torch.no_grad():
        assert torch.equal(loaded.condition(PROMPTS[:3])[0], cond)
    with pytest.raises(BackboneLoadError, match="state_projector"):
        Backbone.from_pretrained(tmp_path / "both", make_cfg(condition_embeddings=True))
    for bad in (dict(condition_state_layer=1), dict(condition_embeddings=True, condition_state_layer=0),
                dict(condition_embeddings=True, condition_state_layer=9)):
        with pytest.raises(ConfigError, match="condition_state_layer"):
            Backbone.from_config(make_cfg(**bad))
    with pytest.raises(ConfigError, match="condition_word_dropout"):
        Backbone.from_config(make_cfg(condition_embeddings=True, condition_word_dropout=1.0))


def test_gradients_reach_queries(backbone):
    backbone.zero_grad()
    cond, _ = backbone.condition(PROMPTS[:2])
    cond.pow(2).mean().backward()
    assert backbone.queries.grad is not None and backbone.queries.grad.abs().sum() > 0
    assert backbone.projector.weight.grad.abs().sum() > 0
    backbone.zero_grad()


def test_condition_in_a_batch_equals_alone(backbone):
    with torch.no_grad():
        batched, _ = backbone.condition(PROMPTS)
        for i, prompt in enumerate(PROMPTS):
            alone, _ = backbone.condition([prompt])
            assert torch.allclose(batched[i], alone[0], atol=1e-5), (i, (batched[i] - alone[0]).abs().max())


def test_condition_unaffected_by_a_previous_generate(backbone, vqa):
    # generate() caches Qwen's mrope `rope_deltas` on the model (batch of 3 here); a later embeds-only forward without
    # explicit positions would reuse them (a shape error, or silently shifted positions for an equal batch size).
    images, questions, _ = vqa
    with torch.no_grad():
        before, _ = backbone.condition(PROMPTS)
        backbone.answer(images[:3], questions[:3], max_new_tokens=2)
        assert backbone.model.model.rope_deltas is not None
        after, _ = backbone.condition(PROMPTS)
    assert torch.equal(before, after)


# ------------------------------------------------------------------------------------------------------ understanding
def test_answer_batched_equals_one_by_one(backbone, vqa):
    images, questions, _ = vqa
    images = [images[0].convert("L"), images[1].resize((48, 48)), images[2].convert("RGBA"), images[3]]  # any mode
    batched = backbone.answer(images, questions, max_new_tokens=4)
    assert len(batched) == len(images) and all(isinstance(a, str) for a in batched)
    assert batched == [backbone.answer([im], [q], max_new_tokens=4)[0] for im, q in zip(images, questions)]


def test_answer_validates_inputs(backbone, vqa):
    images, questions, _ = vqa
    with pytest.raises(ValueError, match="images"):
        backbone.answer(images[:2], questions[:3])
    with pytest.raises(ValueError, match="empty"):
        backbone.answer([], [])
    with pytest.raises(ValueError, match="PIL"):
        backbone.answer([torch.zeros(3, 8, 8)], questions[:1])
    with pytest.raises(ValueError, match="str"):
        backbone.answer(images[:1], [3])


def test_understanding_loss_falls_when_overfitting(vqa):
    torch.manual_seed(0)
    model = Backbone.from_config(make_cfg()).train()
    images, questions, answers = vqa
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = model.understanding_loss(images, questions, answers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    # Training labels and the inference prompt are the same template: the memorised answers come back from generate.
    assert model.eval().answer(images, questions, max_new_tokens=3) == answers


# ------------------------------------------------------------------------------------------------------ save / load
def test_save_load_bit_identical(backbone, tmp_path, vqa):
    backbone.save_pretrained(tmp_path)
    loaded = Backbone.from_pretrained(tmp_path, backbone.cfg).eval()
    with torch.no_grad():
        assert torch.equal(backbone.condition(PROMPTS)[0], loaded.condition(PROMPTS)[0])
    assert loaded.tokenizer.get_vocab() == backbone.tokenizer.get_vocab()
    images, questions, _ = vqa
    assert loaded.answer(images, questions, max_new_tokens=3) == backbone.answer(images, questions, max_new_tokens=3)


def test_load_refuses_missing_files_and_tampered_weights(backbone, tmp_path):
    backbone.save_pretrained(tmp_path)
    (tmp_path / QUERIES_FILE).rename(tmp_path / "elsewhere")
    with pytest.raises(BackboneLoadError, match=QUERIES_FILE):
        Backbone.from_pretrained(tmp_path, backbone.cfg)
    (tmp_path / "elsewhere").rename(tmp_path / QUERIES_FILE)

    queries = load_file(tmp_path / QUERIES_FILE)
    queries["queries"] = queries["queries"][:, :-1]
    save_file(queries, tmp_path / QUERIES_FILE)
    with pytest.raises(BackboneLoadError, match="mismatched.*queries"):
        Backbone.from_pretrained(tmp_path, backbone.cfg)

    weights = load_file(tmp_path / "model.safetensors")
    name = next(k for k in weights if k.endswith("q_proj.weight"))
    weights[name] = weights[name][:-1]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BackboneLoadError, match="model weights"):
        Backbone.from_pretrained(tmp_path, backbone.cfg)

    weights[name] = weights[name].new_zeros(TEXT["hidden_size"], TEXT["hidden_size"])
    weights["model.extra.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BackboneLoadError, match="unexpected_keys"):
        Backbone.from_pretrained(tmp_path, backbone.cfg)

    del weights["model.extra.weight"], weights[name]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BackboneLoadError, match="missing_keys.*q_proj"):
        Backbone.from_pretrained(tmp_path, backbone.cfg)


def test_pretrained_path_reloads_a_saved_backbone(backbone, tmp_path):
    backbone.save_pretrained(tmp_path)  # has processor_config.json: the saved image processor is used
    again = Backbone.from_config(dataclasses.replace(backbone.cfg, pretrained_path=str(tmp_path)))
    assert again.tokenizer.get_vocab() == backbone.tokenizer.get_vocab()  # generation tokens already there
    assert again.processor.image_processor.to_dict() == backbone.processor.image_processor.to_dict()
    assert torch.equal(again.model.get_input_embeddings().weight, backbone.model.get_input_embeddings().weight)


def test_pretrained_path_load_adds_generation_tokens(tmp_path):
    tok = build_shapes_tokenizer()  # a "pretrained" tokenizer: no generation tokens yet
    cfg = make_cfg()
    torch.manual_seed(1)
    model = Qwen2_5_VLForConditionalGeneration(qwen_config(cfg, tok))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    old_rows = model.get_input_embeddings().weight.detach().clone()

    loaded = Backbone.from_config(BackboneConfig(pretrained_path=str(tmp_path), num_queries=NUM_QUERIES))
    vocab = len(loaded.tokenizer)
    assert vocab == len(tok) + 2 and loaded.model.config.text_config.vocab_size == vocab
    rows = loaded.model.get_input_embeddings().weight.detach()
    assert torch.equal(rows[: len(tok)], old_rows)
    assert torch.allclose(rows[token_id(loaded.tokenizer, GEN_START)], old_rows.mean(0))
    cond, _ = loaded.condition(PROMPTS[:2])
    assert cond.shape == (2, NUM_QUERIES, TEXT["hidden_size"])
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    assert isinstance(loaded.answer([image], ["what color is the circle?"], max_new_tokens=2)[0], str)
