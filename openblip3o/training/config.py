"""Typed training configuration: the optimisation loop shared by every stage, and the stage settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.sources import DataSourceConfig


@dataclass
class LoopConfig:
    """One optimisation loop: AdamW with warm-up + cosine, clipping, EMA, accumulation, checkpoints."""

    steps: int = 1000
    batch_size: int = 32  # global batch per optimiser step (split across processes, accumulated micro-batches)
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 = no EMA; EMA weights are what the stage saves when on
    mixed_precision: str = "auto"  # "auto" = bf16 on a GPU, fp32 on a CPU; or "no" / "bf16" / "fp16"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    sample_every: int = 0  # 0 = never; else the stage's sample grid every N steps
    max_bad_steps: int = 5  # consecutive non-finite losses before aborting
    log_with: str = "none"  # "none" | "tensorboard" | "wandb" (a JSONL log is always written)


@dataclass
class StageLoops:
    """The loops of the four stages (the autoencoder has three sub-stages)."""

    vae: LoopConfig = field(default_factory=lambda: LoopConfig(steps=600, batch_size=32, lr=2e-3))
    encoder: LoopConfig = field(default_factory=lambda: LoopConfig(steps=600, batch_size=64, lr=1e-3))
    decoder: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1500, batch_size=32, lr=1e-3, ema_decay=0.999))
    understanding: LoopConfig = field(default_factory=lambda: LoopConfig(steps=800, batch_size=32, lr=1e-3))
    generation: LoopConfig = field(
        default_factory=lambda: LoopConfig(steps=2000, batch_size=32, lr=1e-3, ema_decay=0.999, sample_every=250)
    )
    instruct: LoopConfig = field(default_factory=lambda: LoopConfig(steps=300, batch_size=32, lr=3e-4, warmup_steps=20))


@dataclass
class UnderstandingMix:
    """The understanding stage's batch mix: VQA and captioning on images, plus text-only next-token rows."""

    caption_rate: float = 0.2  # share of captioning requests among the VQA rows
    # question/answer turns per VQA row, all about its one image (1 = a single question, as at inference; more
    # supervises more answers per encoded image)
    turns: int = 1
    # share of "how many <shape>s?" questions asked about a shape the image holds (ShapesWorld; 0 = as annotated,
    # about 1 in 5). Why: with 4 in 5 answered "zero", "how many circles?" beside one circle was answered "zero"
    # (right 125 / 479 teacher-forced) while a linear probe on the answer position read presence at 0.98 (layer 2)
    count_present_rate: float = 0.0
    text_rows: float = 0.5  # text-only rows per VQA row (0 = the answer-only recipe)
    text_weight: float = 1.0  # weight of the text loss in the sum
    text_short_rate: float = 0.1  # text rows: share of short captions
    text_prompt_rate: float = 0.4  # text rows: share of GenEval-style prompts (the rest are long captions)
    # weight of the per-token shape / colour labels on the vision tower's merged tokens (ShapesWorld; 0 = off)
    vision_label_weight: float = 0.0
    # the vision labels' loss weighs background and object tokens equally (else one mean over all tokens)
    vision_label_balanced: bool = False
    # with vision_label_weight: grayscale copies of the batch's first scenes per VQA row, through the vision tower
    # with the shape and place labels only (training/stages/gray_copies.py; 0 = off). Why: the tower's tokens named the
    # shape of held-out colour-shape pairs (red star, ...) at 0.85 against 0.99 for seen ones; gray copies, 0.94
    gray_rows: float = 0.0
    # the vision labels also name each object token's grid column and row (where it lies; relation questions)
    vision_label_position: bool = False
    # weight of per-token relation labels on the language model's image-token states (ShapesWorld; 0 = off): at each
    # object token, the shape of the nearest object left of / right of / above / below it (training-only heads)
    relation_label_weight: float = 0.0
    relation_label_layer: int = 2  # the language-model layer (1-based) whose output the relation heads read
    # weight of the answer-pointing loss (ShapesWorld; 0 = off): at each position that predicts an answer's first token,
    # head `pointer_head` of language-model layer `pointer_layer` (1-based) is taught to attend to the image tokens
    # of the object the question names
    pointer_weight: float = 0.0
    pointer_layer: int = 3
    pointer_head: int = 0
    # with pointer_weight: a question naming objects the image lacks ("how many stars?" with no star) teaches the head
    # to attend to the image's start token instead of being left out. Why: "how many circles?" beside one circle was
    # answered "zero" (right 10 / 40 on unseen scenes) although the head found the circle (mass 0.99): attention
    # normalises, so found and not found read alike. Measured with count_present_rate 0.5, 200 steps: present
    # counts right 40 / 40, absent 154 / 156 (without it 36 / 40 and 130 / 156: absent shapes answered "one")
    pointer_absent_to_image_start: bool = False
    # weight of word pointing (ShapesWorld; 0 = off): at the same positions, head `word_pointer_head` of layer
    # `word_pointer_layer` is taught to attend to the question's colour and shape words, so the answer position holds
    # what it must look up (training/stages/word_pointer.py). Why: it did not hold a shape question's colour, and no
    # head could find "the red object"; put it a layer below `pointer_layer`
    word_pointer_weight: float = 0.0
    word_pointer_layer: int = 1
    word_pointer_head: int = 1
    # weight of relation pointing (ShapesWorld; 0 = off): at the position that predicts a relation question's answer,
    # heads `relation_pointer_heads` of layer `relation_pointer_layer` are taught to attend to the first and the
    # second object the question names (the two lookups a comparison needs)
    relation_pointer_weight: float = 0.0
    relation_pointer_layer: int = 3
    relation_pointer_heads: tuple[int, int] = (0, 1)
    # weight of the relation-pair labels (ShapesWorld; 0 = off): a training-only linear head on layer
    # `relation_pointer_layer`'s output at that position names the four relations of the first object to the second
    # (left of / right of / above / below; those not clear by CLEAR_RELATION are left out). Why: the answer is the
    # asked relation's bit of these four, a product whose factors alone do not correlate with it (left of and right
    # of are asked equally), so the answer loss alone leaves the model at a constant answer
    relation_pair_weight: float = 0.0
    # with relation_pair_weight: the weight, inside it, of a label for which relation the question asks, at the same
    # place, so the next layer holds both factors of the answer. Measured: the four relations alone were named at
    # 1.00 with the answers still constant; this label made them follow the image (README)
    relation_asked_weight: float = 0.0
    # with trainable "all": weight of a loss that keeps the generation condition where it was at the stage's start
    # (the query states of generation-template prompts, in the condition norm's standardised units, against a frozen
    # copy of the starting language model; the input embeddings, which the condition's word part reads, are frozen),
    # so a trained generator keeps working while the language model learns to answer (0 = off)
    condition_retention_weight: float = 0.0
    # prompts per VQA row that the retention loss reads (drawn as the text rows are)
    condition_retention_rows: float = 0.5
    # the pipeline folder (save_pretrained) whose language model the retention holds the condition to; empty = the
    # stage's start. Why: a run continued from an understanding run whose condition already moved can pull it back to
    # where the generator it keeps was trained (that generator's own pipeline)
    condition_retention_reference: str = ""
    # what learns: "all" = the whole backbone (the mini recipe from scratch); "vision" = the vision tower and its
    # merger only, the language model frozen, so the generation path (text only) stays bit for bit as it was: more
    # understanding for a trained model without retraining its generator (text rows then teach nothing: set 0)
    trainable: str = "all"


@dataclass
class StageData:
    """Each stage's data source (ShapesWorld by default; webdataset shards with `kind: shards`). Joint training
    reads the understanding and generation sources; instruct has its own (`instruct_data`)."""

    autoencoder: DataSourceConfig = field(default_factory=DataSourceConfig)  # the VAE, encoder and decoder
    understanding: DataSourceConfig = field(default_factory=DataSourceConfig)
    generation: DataSourceConfig = field(default_factory=DataSourceConfig)


@dataclass
class TrainConfig:
    preset: str = "mini"
    # overrides of the preset's model config (nested, strict: e.g. {"backbone": {"condition_norm": "none"}}); they
    # apply when a run starts from the preset, not to a run resumed from its saved pipeline
    model: dict = field(default_factory=dict)
    seed: int = 0
    loops: StageLoops = field(default_factory=StageLoops)
    data: StageData = field(default_factory=StageData)
    understanding: UnderstandingMix = field(default_factory=UnderstandingMix)
    # autoencoder: weight of the CLIP encoder's training-only per-token shape / colour heads (ShapesWorld labels;
    # 0 = the contrastive and pixel losses alone), so that its tokens, the DiT's target, carry shape
    encoder_label_weight: float = 0.0
    # autoencoder: the decoder's conditioning augmentation, the largest noise level (target units) its tokens are
    # noised with in the DiT's target space (0 = exact tokens, as BLIP3-o's decoder); see DecoderTask
    decoder_condition_noise: float = 0.0
    # autoencoder: the share of the decoder's rows kept exact (level 0) under conditioning augmentation, so a decoder
    # told the level (decoder.level_conditioning) also learns exact tokens as often as noised ones
    decoder_exact_rate: float = 0.0
    # generation: the last K language layers of the backbone learn too (0 = BLIP3-o's frozen backbone); check VQA
    generation_trainable_layers: int = 0
    # generation and instruct: the learnable queries learn (BLIP3-o). At mini scale they measured better frozen at
    # their scaled initial values: trained, they drifted towards states that carry less of the prompt (the spread of
    # one-word-different prompts' query states fell 3.7x in 200 steps) and the DiT's prompt_swap stayed at 0.04
    # against 0.11 with them frozen; trained in instruct, the condition's colour pair difference fell 0.33 -> 0.15.
    generation_train_queries: bool = True
    # generation and instruct: extra flow-loss weight on the DiT tokens objects cover (ShapesWorld's plain background;
    # training/stages/foreground.py), so drawing and binding the named objects outweighs the empty background;
    # 0 = every token alike (BLIP3-o)
    generation_foreground_weight: float = 0.0
    # generation: weight of the binding hinge: each caption must explain its image better than the same words bound
    # differently (two colours or two shapes exchanged, data/shapes/negatives.py), which a bag of words cannot;
    # costs one more DiT pass for each row that has a negative. 0 = none (BLIP3-o)
    generation_binding_weight: float = 0.0
    short_caption_rate: float = 0.1  # generation: share of short captions among the long ones
    instruct_lora_rank: int = 0  # 0 = full fine-tuning of queries + DiT; > 0 = LoRA through peft
    # a folder of `openblip3o curate` shards (prompt + image); None = ShapesWorld prompts drawn and rendered on the
    # fly, weighted by a quick probe of the model (the same recipe, without the files)
    instruct_data: str | None = None
    joint: bool = False  # train backbone and generator together with both losses (the comparison)
