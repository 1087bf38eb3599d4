"""The Gradio demo: a Generate tab (prompt -> gallery) and an Ask tab (image + question -> answer).

Both tabs share one pipeline through one `MicroBatcher`, so visitors clicking at the same time share a batch, exactly
as HTTP clients do, and the pipeline is only ever touched by the batcher's worker thread.
"""

from __future__ import annotations

import os

from ..config import SamplingSettings
from .batcher import MicroBatcher
from .limits import Limits, RequestError, check_text

# Gradio otherwise phones home for analytics and version checks; on a closed network that only adds timeouts.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TITLE = "openblip3o"
MAX_DEMO_STEPS = 100  # slider range; the model's default (30 for mini) sits inside it
MAX_DEMO_GUIDANCE = 10.0
GUIDANCE_STEP = 0.5
DEFAULT_IMAGES = 4
DEFAULT_SEED = 0
RANDOM_SEED = -1  # the seed box's "draw one for me" value
CONCURRENCY = 8  # events in flight at once; the batcher turns them into shared batches
EXAMPLE_PROMPTS = ["a photo of a red circle", "a photo of two stars", "a photo of a blue square above a yellow cross"]
INTRO = (
    "One model that **generates images** from text and **answers questions** about images, built the BLIP3-o way. "
    "This demo runs `{model}` on the {device}."
)


def build_demo(batcher: MicroBatcher, model_id: str = "mini", *, decoder_steps: int | None = None):
    """The Blocks app. `decoder_steps` overrides the model's decoder steps (tests use few for speed)."""
    import gradio as gr

    pipe, limits = batcher.pipe, batcher.limits
    sampling = pipe.config.sampling

    def generate(prompt: str, n: float, seed: float | None, steps: float, guidance: float):
        try:
            prompt = check_text(prompt, limits.max_prompt_chars, "prompt", "prompt")
        except RequestError as err:
            raise gr.Error(err.message) from None
        seed = None if seed is None or int(seed) == RANDOM_SEED else abs(int(seed))
        settings = SamplingSettings(int(steps), float(guidance), decoder_steps, None)
        images = _wait(lambda: batcher.generate(prompt, int(n), seed, settings))
        return [(image, f"{prompt} #{k + 1}") for k, image in enumerate(images)]

    def ask(image, question: str):
        if image is None:
            raise gr.Error("upload an image first")
        try:
            question = check_text(question, limits.max_question_chars, "question", "question")
        except RequestError as err:
            raise gr.Error(err.message) from None
        return _wait(lambda: batcher.answer(image, question))

    with gr.Blocks(title=TITLE) as app:
        device = next(pipe.model.parameters()).device.type.upper()
        gr.Markdown(f"# {TITLE}\n" + INTRO.format(model=model_id, device=device))
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(label="Prompt", value=EXAMPLE_PROMPTS[0], lines=2, elem_id="prompt")
                    count = gr.Slider(1, limits.max_n, value=min(DEFAULT_IMAGES, limits.max_n), step=1,
                                      label="Number of images", elem_id="num-images")
                    seed = gr.Number(value=DEFAULT_SEED, precision=0, label=f"Seed ({RANDOM_SEED}: random)",
                                     elem_id="seed")
                    steps = gr.Slider(1, MAX_DEMO_STEPS, value=sampling.num_inference_steps, step=1, label="Steps",
                                      elem_id="steps")
                    guidance = gr.Slider(0.0, MAX_DEMO_GUIDANCE, value=sampling.guidance_scale, step=GUIDANCE_STEP,
                                         label="Guidance scale", elem_id="guidance")
                    go = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    gr.Examples(EXAMPLE_PROMPTS, inputs=[prompt])
                with gr.Column(scale=2):
                    gallery = gr.Gallery(label="Images", columns=4, height="auto", object_fit="contain",
                                         elem_id="gallery")
            inputs = [prompt, count, seed, steps, guidance]
            go.click(generate, inputs, gallery, concurrency_limit=CONCURRENCY)
            prompt.submit(generate, inputs, gallery, concurrency_limit=CONCURRENCY)
        with gr.Tab("Ask"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], elem_id="ask-image")
                with gr.Column():
                    question = gr.Textbox(label="Question", value="how many shapes are there?", elem_id="question")
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask-button")
                    answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
            ask_button.click(ask, [image, question], answer, concurrency_limit=CONCURRENCY)
            question.submit(ask, [image, question], answer, concurrency_limit=CONCURRENCY)
    return app


def _wait(submit):
    """Submit to the batcher and wait; a full queue or a rejected input becomes a Gradio error toast, not a trace."""
    import gradio as gr

    try:
        return submit().result()
    except (RequestError, ValueError) as err:
        raise gr.Error(getattr(err, "message", str(err))) from None


def launch_demo(pipe, model_id: str = "mini", *, host: str = "127.0.0.1", port: int = 7860,
                limits: Limits | None = None, decoder_steps: int | None = None, block: bool = True):
    """Build and launch the demo; with `block=False` it returns `(app, url)` with the server running in a thread."""
    limits = limits or Limits()
    batcher = MicroBatcher(pipe, limits)
    app = build_demo(batcher, model_id, decoder_steps=decoder_steps)
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=limits.max_queue)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                           share=False, footer_links=["api"], ssr_mode=False)
    if block:
        batcher.close()
    app.batcher = batcher  # for callers that close it themselves
    return app, url
