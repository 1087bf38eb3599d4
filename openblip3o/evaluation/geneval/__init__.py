"""GenEval: official folder layout, decision rules, and the ShapesWorld detector."""
