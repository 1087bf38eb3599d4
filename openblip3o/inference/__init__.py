"""Pipelines: text-to-image generation and image question answering."""
