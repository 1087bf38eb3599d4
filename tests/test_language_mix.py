"""The understanding stage's text-only rows (the mini backbone's language-model loss) and the query/condition levers."""

import pytest
import torch

from openblip3o.config import ConfigError
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.models.template import IGNORE_INDEX, generation_inputs, language_inputs
from openblip3o.models.tokenizer import GEN_START, token_id
from openblip3o.training.config import UnderstandingMix
from openblip3o.training.stages.understanding import UnderstandingTask
from tiny import tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()


def test_language_rows_are_the_generation_template_with_every_real_token_labelled(model):
    tok = model.backbone.tokenizer
    captions = ["a photo of a red circle", "two shapes on a black background: a large blue star on the left."]
    batch = language_inputs(tok, captions, max_length=128)
    real = batch["attention_mask"] == 1
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])  # loss on every real token
    assert (batch["labels"][~real] == IGNORE_INDEX).all()  # and on no padding
    assert bool((~real).any())  # the short caption was padded (on the left)
    # The same tokens the generation path reads, up to and including GEN_START.
    gen = generation_inputs(tok, captions, num_queries=3, max_length=128)
    for row in range(2):
        ids = batch["input_ids"][row][real[row]].tolist()
        gen_ids = gen["input_ids"][row][gen["attention_mask"][row] == 1].tolist()[:-3]
        assert ids == gen_ids and ids[-1] == token_id(tok, GEN_START)


@pytest.mark.parametrize("text_rows", [0.5, 0.25])
def test_understanding_batches_mix_text_rows_in_the_configured_ratio(model, text_rows):
    task = UnderstandingTask(model, seed=0, mix=UnderstandingMix(text_rows=text_rows))
    images, questions, answers, texts, labels, follow_ups = task.batch(0, 16)
    assert labels is None and follow_ups == [[]] * 16  # vision labels and follow-up turns are off by default
    assert len(images) == len(questions) == len(answers) == 16
    assert len(texts) == round(16 * text_rows) and all(isinstance(t, str) and t for t in texts)
    assert task.batch(0, 16)[3] == texts  # by position: the same rows again
    assert task.batch(16, 16)[3] != texts
    loss, logs = task.loss((images, questions, answers, texts, labels, follow_ups), torch.Generator().manual_seed(0))
    assert set(logs) == {"ce", "text"} and loss.item() == pytest.approx(logs["ce"] + logs["text"], rel=1e-4)


def test_answer_only_recipe_stays_available(model):
    task = UnderstandingTask(model, seed=0, mix=UnderstandingMix(text_rows=0.0))
    batch = task.batch(0, 8)
    assert batch[3] == []
    assert set(task.loss(batch, torch.Generator().manual_seed(0))[1]) == {"ce"}


def test_query_init_scale_is_relative_to_the_token_embeddings():
    torch.manual_seed(0)
    scaled = BLIP3oPipeline.from_preset("mini", tiny_config(backbone={"query_init_scale": 1.0})).model.backbone
    blip3o = BLIP3oPipeline.from_preset("mini", tiny_config(backbone={"query_init_scale": None})).model.backbone
    token_std = scaled.model.get_input_embeddings().weight.std().item()
    assert scaled.queries.std().item() == pytest.approx(token_std, rel=0.2)
    assert blip3o.queries.std().item() == pytest.approx(1.0, rel=0.2)  # BLIP3-o's unscaled randn


def test_condition_norm_removes_what_every_prompt_shares_with_fixed_statistics(tmp_path):
    torch.manual_seed(0)
    pipe = BLIP3oPipeline.from_preset("mini", tiny_config(backbone={"condition_norm": "standardize",
                                                                    "condition_norm_momentum": 0.0}))
    backbone = pipe.model.backbone.eval()
    prompts = [f"a photo of a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "star")]
    raw = backbone.query_states(prompts)[0]
    assert torch.equal(backbone.condition_norm(raw), raw)  # the identity until fitted
    backbone.fit_condition_norm([prompts[:5], prompts[5:]])
    normalised = backbone.condition_norm(backbone.query_states(prompts)[0]).flatten(1)
    assert normalised.mean(0).abs().max().item() < 1e-3  # the shared part is gone
    assert normalised.std(0).mean().item() == pytest.approx(1.0, abs=0.05)
    # Fixed statistics: a prompt's condition does not depend on the other prompts of its batch (a BatchNorm's did).
    alone = backbone.condition(prompts[:1])[0]
    assert torch.allclose(alone, backbone.condition(prompts)[0][:1], atol=1e-5)
    backbone.train()
    assert torch.allclose(alone, backbone.condition(prompts[:1])[0], atol=1e-5)  # and not on train / eval mode
    pipe.model.eval()
    pipe.save_pretrained(tmp_path / "p")  # the statistics travel with the queries
    again = BLIP3oPipeline.from_pretrained(tmp_path / "p").model.backbone.eval()
    assert bool(again.condition_norm.fitted)
    assert torch.allclose(again.condition(prompts[:1])[0], alone, atol=1e-5)


def test_condition_norm_statistics_follow_the_queries_as_they_learn():
    """Fixed statistics went stale once the queries moved (the shared part came back at 2.1 std per feature); with a
    momentum they track the states in training, and inference reads the same buffers (no batch dependence)."""
    torch.manual_seed(0)
    prompts = [f"a photo of a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "square", "star")]
    shared, deviation = {}, {}
    for momentum in (0.0, 0.2):
        torch.manual_seed(0)
        backbone = BLIP3oPipeline.from_preset("mini", tiny_config(backbone={
            "condition_norm": "standardize", "condition_norm_momentum": momentum})).model.backbone
        backbone.fit_condition_norm([prompts])
        with torch.no_grad():
            backbone.queries.add_(3 * backbone.queries.std() * torch.randn_like(backbone.queries))  # the queries learn
        backbone.train()
        with torch.no_grad():
            for _ in range(30):  # training batches
                backbone.condition(prompts)
        backbone.eval()
        normalised = backbone.condition_norm(backbone.query_states(prompts)[0]).flatten(1)
        shared[momentum] = normalised.mean(0).pow(2).mean().sqrt().item()
        deviation[momentum] = (normalised - normalised.mean(0)).pow(2).mean().sqrt().item()
        alone = backbone.condition(prompts[:1])[0]
        assert torch.allclose(alone, backbone.condition(prompts)[0][:1], atol=1e-5)  # eval: no batch dependence
    assert shared[0.0] > 2 * deviation[0.0]  # fixed statistics: the shared part is back on top
    assert shared[0.2] < 0.5 * deviation[0.2]  # tracked statistics: what differs between prompts dominates


def test_generation_stage_fits_the_condition_norm_once(tmp_path):
    from openblip3o.training.stages.generation import GenerationTask

    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config(backbone={"condition_norm": "standardize"})).model
    GenerationTask(model, seed=0)
    norm = model.backbone.condition_norm
    assert bool(norm.fitted) and norm.mean.abs().sum() > 0
    mean = norm.mean.clone()
    GenerationTask(model, seed=1)  # a later stage keeps the statistics the DiT was trained with
    assert torch.equal(norm.mean, mean)


def test_prompt_check_flags_a_generator_conditioned_on_a_constant(tmp_path):
    """A backbone whose condition ignores the prompt: the check must say prompt-blind (and write its row)."""
    from golden_losses import scorers
    from openblip3o.training.prompt_check import CHECK_FILE, prompt_check

    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.eval()
    constant = torch.randn(1, model.backbone.num_queries, model.backbone.condition_dim)

    def blind(prompts):
        return constant.expand(len(prompts), -1, -1), torch.ones(len(prompts), constant.shape[1], dtype=torch.long)

    model.backbone.condition = blind
    lines = []
    row = prompt_check(model, step=7, scorers=scorers(), out_dir=tmp_path, log=lines.append)
    assert row["prompt_blind"] and row["prompt_swap"] == 0.0 and row["zero_condition"] > 0
    assert row["attribute_swap"] == 0.0 and "attribute_swap 0.0000" in lines[0]
    assert row["attribute_change"] == 0.0 and row["binding_ratio"] == 0.0  # a constant condition changes for nothing
    assert "PROMPT-BLIND" in lines[0]
    assert (tmp_path / CHECK_FILE).read_text().count('"step": 7') == 1
    # The same model reading its prompt is not flagged.
    del model.backbone.condition
    with torch.no_grad():
        model.backbone.queries.mul_(0.01)  # let the prompt through the random tiny backbone
    reading = prompt_check(model, step=8, scorers=scorers(), out_dir=tmp_path, log=lines.append)
    assert not reading["prompt_blind"] and reading["attribute_change"] > 0
    assert reading["binding_ratio"] == pytest.approx(reading["attribute_swap"] / reading["attribute_change"])
    assert "of a colour change" in lines[-1]


def test_generation_stage_can_keep_the_queries_frozen():
    """Trained queries drifted towards prompt-blind states at mini scale; frozen ones stay put while the DiT learns."""
    from openblip3o.training.stages.generation import GenerationTask

    for train_queries in (True, False):
        torch.manual_seed(0)
        model = BLIP3oPipeline.from_preset("mini", tiny_config(backbone={"condition_norm": "standardize"})).model.train()
        task = GenerationTask(model, seed=0, train_queries=train_queries)
        params = [p for module in task.modules().values() for p in module.parameters() if p.requires_grad]
        before = model.backbone.queries.detach().clone()
        dit_before = [p.detach().clone() for p in model.generator.parameters()]
        optimiser = torch.optim.AdamW(params, 1e-2)
        loss, _ = task.loss(task.batch(0, 4), torch.Generator().manual_seed(0))
        loss.backward()
        optimiser.step()
        assert torch.equal(model.backbone.queries, before) is (not train_queries)
        assert any(not torch.equal(p, q) for p, q in zip(model.generator.parameters(), dit_before))


def test_multi_turn_rows_ask_more_of_the_same_scenes_questions(model):
    """`turns`: each VQA row continues with more of its scene's own question/answer pairs; 1 changes nothing."""
    single = UnderstandingTask(model, seed=0, mix=UnderstandingMix(text_rows=0.0, caption_rate=0.0))
    multi = UnderstandingTask(model, seed=0, mix=UnderstandingMix(text_rows=0.0, caption_rate=0.0, turns=3))
    one, three = single.batch(0, 8), multi.batch(0, 8)
    assert one[:3] == three[:3] and one[5] == [[]] * 8  # the first turn is the same question as before
    for example, question, answer, follow in zip(multi.source.examples(0, 8), three[1], three[2], three[5]):
        pairs = [(qa["question"], qa["answer"]) for qa in example.annotation["vqa"]]
        assert 1 <= len(follow) <= 2 and (question, answer) not in follow and all(p in pairs for p in follow)
    loss, logs = multi.loss(three, torch.Generator().manual_seed(0))
    assert set(logs) == {"ce"} and torch.isfinite(loss)


def test_understanding_can_train_the_vision_tower_alone_leaving_generation_bit_for_bit():
    """`understanding.trainable: vision`: only the tower (and its merger) learn; the language model, and so the
    generation path, which reads text only, stay exactly as they were. Text rows would teach nothing: refused."""
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model
    prompts = ["a photo of a red circle left of a blue star", "a photo of two squares"]
    with torch.no_grad():
        before = model.eval().backbone.condition(prompts)[0]
    task = UnderstandingTask(model.train(), seed=0, mix=UnderstandingMix(text_rows=0.0, trainable="vision"))
    visual, language = model.backbone.model.model.visual, model.backbone.model.model.language_model
    params = [p for module in task.modules().values() for p in module.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(p) for p in visual.parameters()}
    kept = {k: v.clone() for k, v in language.state_dict().items()}
    tower = {k: v.clone() for k, v in visual.state_dict().items()}
    loss, _ = task.loss(task.batch(0, 8), torch.Generator().manual_seed(0))
    loss.backward()
    torch.optim.SGD(params, lr=0.1).step()
    assert all(p.grad is None for p in language.parameters())
    assert all(torch.equal(v, kept[k]) for k, v in language.state_dict().items())
    assert any(not torch.equal(v, tower[k]) for k, v in visual.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model.eval().backbone.condition(prompts)[0], before)
    with pytest.raises(ConfigError, match="text_rows"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.5, trainable="vision"))
    with pytest.raises(ConfigError, match="trainable"):
        UnderstandingTask(model, mix=UnderstandingMix(trainable="language"))


def test_condition_retention_holds_the_generation_condition_while_the_language_model_learns():
    """`understanding.condition_retention_weight`: the language model learns to answer, and a loss against a frozen
    copy of the stage's starting model keeps the query states the generator was trained on. The drift is 0 at the
    start, grows when the language model moves, and the retention gradient brings it back; the input embeddings (the
    condition's word part) are frozen; the copy travels in the task's modules (checkpoints) but never learns."""
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    mix = UnderstandingMix(text_rows=0.0, condition_retention_weight=1.0, condition_retention_rows=0.5)
    task = UnderstandingTask(model, seed=0, mix=mix)
    batch = task.batch(0, 8)
    assert len(batch[3]) == 4  # the retention prompts, drawn as text rows are
    prompts = batch[3]
    assert task.condition_drift(prompts).item() == 0.0
    loss, logs = task.loss(batch, None)
    assert set(logs) == {"ce", "retention"} and logs["retention"] == 0.0
    reference = task.modules()["condition_reference"]
    assert not any(p.requires_grad for p in reference.parameters())
    assert not model.backbone.model.get_input_embeddings().weight.requires_grad
    language = model.backbone.model.model.language_model
    with torch.no_grad():
        for p in language.layers[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    drifted = task.condition_drift(prompts)
    assert drifted.item() > 1e-3
    params = [p for p in language.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=1e-3)
    for _ in range(20):
        optimiser.zero_grad()
        task.condition_drift(prompts).backward()
        optimiser.step()
    assert task.condition_drift(prompts).item() < 0.5 * drifted.item()
    with pytest.raises(ConfigError, match="condition_retention_weight"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, trainable="vision",
                                                      condition_retention_weight=1.0))


def test_condition_retention_reference_holds_the_condition_to_another_pipelines_backbone(tmp_path):
    """`understanding.condition_retention_reference`: the retention compares with the backbone of a saved pipeline
    (the one whose generator is kept) instead of the stage's start, so a run continued from a moved language model
    starts with a drift above 0 and pulls it back; a folder that is no pipeline, or whose backbone has other shapes,
    is refused by name."""
    torch.manual_seed(0)
    saved = BLIP3oPipeline.from_preset("mini", tiny_config())
    saved.save_pretrained(tmp_path / "kept")
    model = BLIP3oPipeline.from_pretrained(tmp_path / "kept").model.train()
    with torch.no_grad():  # the language model moved since the kept pipeline was saved
        for p in model.backbone.model.model.language_model.layers[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    own_start = UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, condition_retention_weight=1.0))
    mix = UnderstandingMix(text_rows=0.0, condition_retention_weight=1.0,
                           condition_retention_reference=str(tmp_path / "kept"))
    task = UnderstandingTask(model, seed=0, mix=mix)
    prompts = task.batch(0, 8)[3]
    assert own_start.condition_drift(prompts).item() == 0.0
    drifted = task.condition_drift(prompts).item()
    assert drifted > 1e-3
    params = [p for p in model.backbone.model.model.language_model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=1e-3)
    for _ in range(20):
        optimiser.zero_grad()
        task.condition_drift(prompts).backward()
        optimiser.step()
    assert task.condition_drift(prompts).item() < 0.5 * drifted
    with pytest.raises(ConfigError, match="no pipeline folder"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, condition_retention_weight=1.0,
                                                      condition_retention_reference=str(tmp_path / "nothing")))
    text = dict(tiny_config().backbone.text, intermediate_size=96)  # another MLP width
    other = BLIP3oPipeline.from_preset("mini", tiny_config(backbone={"text": text}))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="differs from the trained one"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, condition_retention_weight=1.0,
                                                      condition_retention_reference=str(tmp_path / "other")))
