"""openblip3o: unified multimodal models built the BLIP3-o way."""

__version__ = "0.1.0"
