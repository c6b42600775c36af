"""Plain nn.Module components (no Lightning, no config objects)."""
from uda.models.small import SmallSegNet

__all__ = ["SmallSegNet"]
