"""The design study: an experiment runner above training and evaluation (it trains variants, then measures them)."""
