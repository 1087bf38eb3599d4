"""Training objectives and their samplers, kept apart from the networks (as SiT's `transport/`)."""

from ..config import ObjectiveConfig
from .flow_matching import FlowMatching, drop_condition
from .mse import MSERegression


def build_objective(config: ObjectiveConfig) -> FlowMatching | MSERegression:
    return {"flow_matching": FlowMatching, "mse": MSERegression}[config.name](config)


__all__ = ["FlowMatching", "MSERegression", "build_objective", "drop_condition"]
