"""openblip3o: unified multimodal models built the BLIP3-o way."""

from .version import __version__

__all__ = ["BLIP3oPipeline", "__version__"]


def __getattr__(name):
    # The pipeline pulls in torch, transformers and diffusers: import it only when asked for.
    if name == "BLIP3oPipeline":
        from .inference.pipeline import BLIP3oPipeline

        return BLIP3oPipeline
    raise AttributeError(f"module 'openblip3o' has no attribute {name!r}")
