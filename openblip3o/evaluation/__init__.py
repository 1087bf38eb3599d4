"""Evaluation: GenEval-layout scoring, VQA accuracy."""
