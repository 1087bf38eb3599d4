"""Training stages on accelerate: autoencoder, understanding, generation, instruct."""
