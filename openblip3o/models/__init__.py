"""The unified model: VLM backbone, learnable queries, diffusion transformer, target encoders, decoder."""
