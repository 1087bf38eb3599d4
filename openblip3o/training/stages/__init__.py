"""The training stages as engine tasks: autoencoder (vae, encoder, decoder), understanding, generation, instruct."""
