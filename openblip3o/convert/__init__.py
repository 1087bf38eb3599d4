"""Checkpoint import: the official BLIP3-o release into the `BLIP3oPipeline` folder layout."""

from .official import convert_official, export_official, official_to_ours, ours_to_official, to_official_state_dict

__all__ = ["convert_official", "export_official", "official_to_ours", "ours_to_official", "to_official_state_dict"]
