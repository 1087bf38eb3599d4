"""The trained mini default that ships inside the package: it loads with no download and no warning, fits the size
budget, and really works — it answers held-out questions, reconstructs held-out scenes, draws recognisable shapes
and follows its prompt (same seed, one word changed: the image changes as the word does).

Thresholds sit well below what the shipped model measured on the full held-out sets (README, "The shipped default"),
on small samples so the test stays fast; a model that is random, broken on loading or mis-cast fails them.
"""

import warnings

import numpy as np
import pytest
import torch

from openblip3o import BLIP3oPipeline
from openblip3o.data.shapes import ShapesWorld, evaluation_set
from openblip3o.data.shapes.prompts import record
from openblip3o.evaluation.geneval.detector import detect, foreground_colour
from openblip3o.evaluation.binding import binding_report
from openblip3o.evaluation.geneval.ceiling import autoencoder_ceiling
from openblip3o.evaluation.reconstruct import reconstruct_heldout
from openblip3o.evaluation.vqa import vqa_heldout
from openblip3o.inference.pipeline import SHIPPED_WEIGHTS
from openblip3o.training.checks import Scorers
from openblip3o.training.prompt_check import CHECK_COLOURS, colour_accuracy, colour_records

MAX_SHIPPED_BYTES = 50 * 2**20
VQA_SCENES, MIN_VQA = 30, 0.45
# eval vqa-heldout --lookup, shape questions asked by colour beside an object of another shape, unseen scenes of seen
# compositions: chance between the two shapes is 0.5 (the model shipped until session 10 scored 0.50 on the held-out
# split); the shipped model (session 11) 29 / 29 here, the one before it 17 / 29
LOOKUP_SCENES, MIN_SHAPE_LOOKUP = 80, 0.75
# the same scenes' "how many <shape>s?" about a shape the scene holds (chance about 1/5; the model shipped in session
# 11 answered "zero" to 10 / 40 such questions of 200 scenes) and about one it lacks (answer "zero")
MIN_PRESENT_COUNT, MIN_ABSENT_COUNT = 0.75, 0.85
# object-token shape probe of the vision tower (chance 1/6): the shipped patch-4 tower reads 0.71 / 0.58 here; a
# patch-2 tower (measured 2026-12-04, not shipped: its generation stage drew 6/8 colour prompts right) 0.79 / 0.69
MIN_TOWER_SHAPE = {"eval": 0.68, "heldout": 0.55}
RECON_SCENES, MIN_RECON = 24, 0.5
# eval reconstruct --metadata: single-object prompts through the DiT's target space (shipped 0.91 on all 80)
CEILING_PROMPTS, MIN_CEILING = 8, 6 / 8
# eval binding: exchanging two objects' colours should move the DiT at least this share of what one new colour does
BINDING_PAIRS, MIN_BINDING_SHARE = 8, 0.25
CHAIN_PROBE_SCENES, MIN_TOKEN_WORDS = 300, 0.9  # eval chain, tokens link (chance 1/6 shape, 1/8 colour)
# eval chain, image link: the shape the detector reads in the decoded image (shipped 0.79 at 2 seeds; 0.21 with the
# decoder trained on exact tokens only)
MIN_IMAGE_SHAPE = 0.6
PROMPTS = ["a photo of a red circle", "a photo of a green square", "a photo of a yellow star", "a photo of a blue cross"]
# Of 16 images, how many show at least one clean flat-coloured shape the scorer recognises.
MIN_WITH_OBJECTS = 8
MIN_COLOUR_HITS = 7  # of the 8 colour prompts of the training-time prompt check
SHAPE_SWAP = ("square", "star")
TARGET_SCENES, MIN_SHAPE_FISHER, MIN_SHAPE_SHARE = 300, 2.0, 0.2
SEEDS, FOREGROUND, MIN_AREA_RATIO = 4, 60, 2.0  # count test: per seed, foreground pixels (channel > 60) at least 2x  # "a photo of a red square" vs "... red star", same seed


@pytest.fixture(scope="module")
def shipped():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no trained 'mini' weights.*")
        return BLIP3oPipeline.from_pretrained("mini")


def test_ships_inside_the_package_within_budget(shipped):
    files = [p for p in (SHIPPED_WEIGHTS / "mini").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_SHIPPED_BYTES
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".pkl") for p in files)  # safetensors only
    assert all(p.dtype == torch.float32 for p in shipped.model.parameters())  # stored fp16, cast on load
    assert shipped.model.generator.rotary(torch.device("cpu")).is_complex()


def test_answers_held_out_questions(shipped):
    result = vqa_heldout(shipped, num=VQA_SCENES)
    assert result["accuracy"] >= MIN_VQA, result


@pytest.fixture(scope="module")
def lookups(shipped):
    return vqa_heldout(shipped, num=LOOKUP_SCENES, split="eval", lookup=True)


def test_answers_about_the_object_the_question_names(lookups):
    """"what shape is the red object?" beside a blue star: the answer must come from the red object, not the scene."""
    lookup = lookups["lookup"]["shape"]
    assert lookup["questions"] >= 20 and lookup["accuracy"] >= MIN_SHAPE_LOOKUP, lookup


def test_counts_the_shape_the_question_names(lookups):
    """"how many circles are there?" beside one circle is "one", and "zero" only where there is none."""
    present, absent = lookups["named_count"]["present"], lookups["named_count"]["absent"]
    assert present["questions"] >= 10 and present["accuracy"] >= MIN_PRESENT_COUNT, present
    assert absent["accuracy"] >= MIN_ABSENT_COUNT, absent


def test_draws_single_objects_back_from_the_dit_target_space(shipped):
    singles = [r for r in evaluation_set("heldout") if r["tag"] == "single_object"][:CEILING_PROMPTS]
    result = autoencoder_ceiling(shipped, singles, batch_size=CEILING_PROMPTS)
    assert result["round_trip"] and result["ground_truth"] == 1.0
    assert result["tags"]["single_object"] >= MIN_CEILING, result


@pytest.mark.xfail(strict=True, reason="known limit (README, 'Where GenEval is lost'): the shipped DiT reads its "
                   "prompt as a bag of words (eval binding: attribute_swap 0.002 against attribute_change 0.18); "
                   "a model that binds colours to objects makes this pass, and then the marker must go")
def test_binds_colours_to_objects(shipped):
    generator = binding_report(shipped, num=BINDING_PAIRS)["generator"]
    assert generator["attribute_swap"] >= MIN_BINDING_SHARE * generator["attribute_change"], generator


def test_reconstructs_held_out_scenes(shipped):
    scores = reconstruct_heldout(shipped, num=RECON_SCENES, batch_size=RECON_SCENES, seed=0,
                                 num_inference_steps=shipped.config.decoder.num_inference_steps,
                                 guidance_scale=shipped.config.decoder.guidance_scale)
    assert scores["fully_correct"] >= MIN_RECON, scores


def test_draws_recognisable_shapes(shipped):
    images = shipped(PROMPTS, num_images_per_prompt=4, generator=[torch.Generator().manual_seed(i) for i in range(16)],
                     progress=False).images
    assert ShapesWorld("heldout", 0)[0].image.size == images[0].size
    with_objects = sum(bool(detect(image)[0]) for image in images)
    assert with_objects >= MIN_WITH_OBJECTS, with_objects


def test_draws_the_colour_its_prompt_names_at_one_seed(shipped):
    """8 colour prompts, one shared seed: the image is drawn in the asked colour (whatever its shape) for at least 7.
    A prompt-blind model draws one colour for all 8 (the model shipped earlier on 2026-12-03: 2 of 8)."""
    records = colour_records()
    gens = [torch.Generator().manual_seed(0) for _ in records]
    images = shipped([r["prompt"] for r in records], generator=gens, progress=False).images
    drawn = [foreground_colour(image) for image in images]
    hits = sum(d == r["include"][0]["color"] for d, r in zip(drawn, records))
    assert hits >= MIN_COLOUR_HITS, drawn


def test_follows_colour_words_at_one_seed(shipped):
    """8 colour prompts of seen colour-shape pairs, one shared seed: a prompt-blind model draws one image for all
    of them and scores 1/8; the shipped model must get at least 7 right (forward passes only)."""
    accuracy, _ = colour_accuracy(shipped.model.eval(), colour_records(), Scorers(detect, sensitivity=None))
    assert accuracy >= MIN_COLOUR_HITS / len(CHECK_COLOURS), accuracy


@pytest.mark.parametrize("seed", [0, 1])
def test_a_different_shape_word_draws_a_different_shape(shipped, seed):
    """"a red square" and "a red star" at one seed: the detector reads different shapes (the issue's check; a
    prompt-blind model draws one image for both). Rule-level shape accuracy is guarded by the chain test below (0.79
    over 84 single-object images): at seed 0 the shipped model's star is a rough blob read as a diamond, so "both
    right by rule" at one seed, asked here until 2026-12-04, holds at some seeds only."""
    records = [record("colors", [{"class": shape, "count": 1, "color": "red"}]) for shape in SHAPE_SWAP]
    gens = [torch.Generator().manual_seed(seed) for _ in records]
    images = shipped([r["prompt"] for r in records], generator=gens, progress=False).images
    found = [sorted(obj.shape for obj in detect(image)[0]) for image in images]
    assert all(found) and found[0] != found[1], found


def test_the_target_tokens_carry_shape(shipped):
    """The DiT's target names the shape under each token (`openblip3o eval target`): the model shipped before the
    encoder learned per-token labels had a best shape Fisher ratio of 0.44 (3.8 % of the variance between shapes)
    and its DiT drew the same outline whatever the shape word; the shipped one 5.8 (41 %)."""
    from openblip3o.evaluation.target_probe import target_separability

    shape = target_separability(shipped.model.target_encoder, num=TARGET_SCENES)["shape"]
    assert shape["fisher"][0] >= MIN_SHAPE_FISHER and shape["between_share"] >= MIN_SHAPE_SHARE, shape


def test_the_generator_names_the_prompts_shape_and_colour_in_its_tokens_and_the_decoder_draws_it(shipped):
    """`openblip3o eval chain` at one seed: probes fitted on true target tokens read the shape and colour of the
    prompt in what the DiT samples (shipped: 1.00 / 1.00 of 42 prompts), and the decoded images show it (0.79 at 2
    seeds; 0.21 before the decoder's conditioning augmentation)."""
    from openblip3o.evaluation.chain import chain_report

    report = chain_report(shipped, seeds=1, num=CHAIN_PROBE_SCENES)
    assert report["tokens"]["shape"] >= MIN_TOKEN_WORDS and report["tokens"]["color"] >= MIN_TOKEN_WORDS, report
    assert report["image"]["shape"] >= MIN_IMAGE_SHAPE, report


def test_the_vision_tower_names_the_shape_under_each_object_token(shipped):
    """`openblip3o eval vision` at a small size (probes on 256 training scenes, 64 per test split): a regression
    guard on what the language model can read; held-out shape questions follow it (0.38 at the shipped 0.71 / 0.58,
    0.69 at a patch-2 tower's 0.79 / 0.69)."""
    from openblip3o.evaluation.vision_probe import vision_probe

    result = vision_probe(shipped.model.backbone, num=256, num_test=64)
    assert result["shape"]["eval"] >= MIN_TOWER_SHAPE["eval"], result
    assert result["shape"]["heldout"] >= MIN_TOWER_SHAPE["heldout"], result
    assert result["color"]["eval"] >= 0.95, result


def test_the_vision_probe_places_each_object_token_where_its_object_lies(shipped):
    """The `column` / `row` labels of `eval vision` (does a tower token know where it lies?) are the grid cells the
    object covers: its centre's cell is among them, and every labelled cell is within the object's reach."""
    from openblip3o.evaluation.vision_probe import object_tower_tokens

    backbone = shipped.model.backbone
    cell = backbone.cfg.image_size // backbone.vision_grid  # pixels per merged token
    for example in [ShapesWorld("eval", 0)[i] for i in range(6)]:
        _, labels = object_tower_tokens(backbone, [example])
        places = set(zip(labels["column"].tolist(), labels["row"].tolist()))
        for thing in example.scene.objects:
            assert (thing.cx // cell + 1, thing.cy // cell + 1) in places, (thing, places)
        reach = {(c, r) for thing in example.scene.objects
                 for c in range((thing.cx - thing.radius) // cell + 1, (thing.cx + thing.radius) // cell + 2)
                 for r in range((thing.cy - thing.radius) // cell + 1, (thing.cy + thing.radius) // cell + 2)}
        assert places <= reach, (places - reach)


@pytest.mark.parametrize("single, several", [("a photo of a circle", "a photo of four circles"),
                                             ("a photo of a star", "a photo of three stars")])
def test_a_count_word_changes_the_image_at_the_same_seed(shipped, single, several):
    """Same seeds, one word changed: the several-object prompt draws more shape (measured 3.5-8x the foreground
    area per seed). The model shipped on 2026-12-02 drew the same image whatever the prompt and fails this."""
    def areas(prompt):
        images = shipped([prompt], num_images_per_prompt=SEEDS, progress=False,
                         generator=[torch.Generator().manual_seed(i) for i in range(SEEDS)]).images
        return [int((np.asarray(im).max(axis=2) > FOREGROUND).sum()) for im in images]

    one, many = areas(single), areas(several)
    assert all(m > MIN_AREA_RATIO * o for o, m in zip(one, many)), (one, many)
