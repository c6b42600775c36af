"""Losses as pure tensor functions."""
from uda.losses.segmentation import segmentation_ce

__all__ = ["segmentation_ce"]
