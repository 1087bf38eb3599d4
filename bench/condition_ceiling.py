"""Which form of the prompt can a fresh DiT learn colour from? A ceiling spike of a few minutes (2 cores).

    python bench/condition_ceiling.py PIPELINE STEPS MODE

A fresh DiT (and projector) trains STEPS steps (batch 32, lr 1e-3) on GenEval-style prompts of the train split, on
PIPELINE's frozen backbone, target encoder and decoder; every 250 steps it draws the 8 colour prompts of the prompt
check at seeds 0 and 1 and prints the rule score and the share whose dominant drawn colour is the asked one. MODE:
  bow      the prompt's token embeddings (no transformer: an oracle of what the words say)
  states   the backbone's standardised final query states (BLIP3-o's condition, as shipped)
  tokens   the backbone's final states of every prompt token and query
  layerK   the query states after language layer K (refitted standardisation)
  template the token embeddings of the whole generation template (instruction, prompt, GEN_START) and the 64 queries,
           each scaled to unit std: the bow oracle diluted as the real condition is, with no transformer
  both     the template's token embeddings (as `template`, its own projection) followed by the shipped condition
           (standardised final query states): the lever "keep the prompt's input embeddings beside the query states"
Measured 2026-12-03 on runs/v4 (full-width target, 500 steps): bow 0.31 / 0.56, states 0.12 / 0.25, tokens 0.00 / 0.19,
layer2 0.06 / 0.38. On the shipped model (32 principal components), 600 steps: template 0.375 / 0.875 (14 of 16
dominant colours right): the instruction tokens and the 64 queries do not hide the words; the transformer's states do.
Optional 4th and 5th arguments: the flow-matching shift and `whiten` (each principal component at unit variance).
On the shipped model, `states`, 500 steps: shift 3 gave rule 10 / 16, colour 16 / 16; shift 1 7 / 16, 14 / 16;
shift 3 whitened 7 / 16, 15 / 16.
"""
import sys
import time

import numpy as np
import torch

torch.set_num_threads(2)
from openblip3o.data.shapes.rules import evaluate
from openblip3o.data.shapes.world import PALETTE
from openblip3o.evaluation.geneval.detector import detect
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.models.generator import Generator
from openblip3o.training.prompt_check import colour_records
from openblip3o.training.stages.generation import GenerationTask

path, steps, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
shift = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
whiten = len(sys.argv) > 5 and sys.argv[5] == "whiten"
pipe = BLIP3oPipeline.from_pretrained(path); m = pipe.model
cfg = m.config; cfg.objective.shift = shift
from openblip3o.objectives import build_objective

m.objective = build_objective(cfg.objective)
torch.manual_seed(0)
m.generator = Generator(cfg.generator, m.target_encoder.latent_dim, cfg.target.grid_size, m.backbone.condition_dim)
proj = torch.nn.Linear(256, 256)
bb = m.backbone; tok = bb.tokenizer; emb = bb.model.get_input_embeddings()
scale = 1.0 / emb.weight.detach().std()
if mode == "bow":
    def condition(prompts):
        ids = tok(list(prompts), padding="max_length", max_length=64, truncation=True, return_tensors="pt")
        with torch.no_grad():
            e = emb(ids["input_ids"]) * scale
        return proj(e), ids["attention_mask"].bool()
    bb.condition = condition
if mode == "template":
    from openblip3o.models.template import generation_inputs
    def condition(prompts):
        n = bb.num_queries
        batch = generation_inputs(tok, list(prompts), n, bb.cfg.max_prompt_tokens)
        with torch.no_grad():
            e = emb(batch["input_ids"]) * scale
            e = torch.cat([e[:, :-n], (bb.queries / bb.queries.std()).expand(len(prompts), -1, -1)], 1)
        return proj(e), batch["attention_mask"].bool()
    bb.condition = condition
if mode == "both":
    from openblip3o.models.template import generation_inputs
    shipped_condition = bb.condition
    def condition(prompts):
        n = bb.num_queries
        batch = generation_inputs(tok, list(prompts), n, bb.cfg.max_prompt_tokens)
        with torch.no_grad():
            e = emb(batch["input_ids"][:, :-n]) * scale
        states, state_mask = shipped_condition(list(prompts))
        mask = torch.cat([batch["attention_mask"][:, :-n].bool(), state_mask.bool()], 1)
        return torch.cat([proj(e), states], 1), mask
    bb.condition = condition
if mode != "bow": bb.projector.reset_parameters()
if mode.startswith("layer"):
    layer = int(mode[5:])
    from openblip3o.models.template import generation_inputs
    def query_states(prompts):
        n = bb.num_queries
        batch = generation_inputs(tok, list(prompts), n, bb.cfg.max_prompt_tokens)
        ids, am = batch["input_ids"], batch["attention_mask"]
        embeds = emb(ids)
        embeds = torch.cat([embeds[:, :-n], bb.queries.expand(len(prompts), -1, -1)], 1)
        pos = (am.cumsum(-1) - 1).clamp(min=0)
        out = bb.model.model(input_ids=None, inputs_embeds=embeds, attention_mask=am, position_ids=pos, use_cache=False, output_hidden_states=True)
        return out.hidden_states[layer][:, -n:], am[:, -n:]
    bb.query_states = query_states
    bb.condition_norm.fitted.fill_(False)
if mode == "tokens":
    from openblip3o.models.template import generation_inputs
    stats = {}
    def condition(prompts):
        n = bb.num_queries
        batch = generation_inputs(tok, list(prompts), n, bb.cfg.max_prompt_tokens)
        ids, am = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            embeds = emb(ids)
            embeds = torch.cat([embeds[:, :-n], bb.queries.expand(len(prompts), -1, -1)], 1)
            pos = (am.cumsum(-1) - 1).clamp(min=0)
            h = bb.model.model(input_ids=None, inputs_embeds=embeds, attention_mask=am, position_ids=pos, use_cache=False).last_hidden_state
            if not stats:
                sel = h[am.bool()]
                stats["mean"], stats["std"] = sel.mean(0), sel.std(0).clamp_min(1e-3)
            h = (h - stats["mean"]) / stats["std"]
        return proj(h), am.bool()
    bb.condition = condition
task = GenerationTask(m, 0, short_rate=0.0, prompt_rate=1.0)
if whiten:  # `target.whiten_components`: each principal component refitted to unit variance
    encoder = m.target_encoder
    encoder.principal.whiten = True
    with torch.no_grad():
        encoder.fit_principal_components(torch.cat([encoder.encode(task.rows(i * 64, 64)[0]) for i in range(8)]))
    print("component std:", [round(v, 3) for v in (encoder.principal.scale * encoder.principal.component_scale).tolist()],
          flush=True)
m.backbone.queries.requires_grad_(False)
params = list(m.generator.parameters()) + (list(proj.parameters()) if mode in ("bow", "tokens", "template") else list(bb.projector.parameters()))
if mode == "both":
    params += list(proj.parameters())
opt = torch.optim.AdamW(params, 1e-3)
names = list(PALETTE); pal = np.array([PALETTE[n] for n in names], dtype=float)
def dominant(im):
    px = np.asarray(im).reshape(-1, 3).astype(float); px = px[px.max(1) > 60]
    if len(px) == 0: return None
    return names[np.bincount(((px[:, None] - pal[None]) ** 2).sum(-1).argmin(1), minlength=len(names)).argmax()]
def check(step):
    m.eval(); recs = colour_records(); rule = dom = n = 0
    for seed in range(2):
        gens = [torch.Generator().manual_seed(seed) for _ in recs]
        ims = pipe([r["prompt"] for r in recs], generator=gens, num_inference_steps=20, decoder_num_inference_steps=20, progress=False).images
        for r, im in zip(recs, ims):
            rule += evaluate(r, detect(im)[0])[0]; dom += dominant(im) == r["include"][0]["color"]; n += 1
    m.train(); print(f"step {step}: rule {rule/n:.3f} dominant colour {dom/n:.3f}", flush=True)
m.train(); t0 = time.time()
for step in range(1, steps + 1):
    loss, logs = task.loss(task.batch(step * 32, 32), torch.Generator().manual_seed(step))
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
    if step % 100 == 0: print(step, round(logs["flow"], 4), f"{time.time()-t0:.0f}s", flush=True)
    if step % 250 == 0: check(step)
