"""Serving: the OpenAI-compatible HTTP server and the Gradio demo."""
