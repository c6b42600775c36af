"""LightningModules: the training recipes."""
from uda.modules.base import SegmentationModule
from uda.modules.supervised import SourceOnly

__all__ = ["SegmentationModule", "SourceOnly"]
