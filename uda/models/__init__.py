"""Plain nn.Module components (no Lightning, no config objects)."""
from uda.models.deeplabv2 import DeepLabV2
from uda.models.drn import DRNC26
from uda.models.small import SmallSegNet

__all__ = ["SmallSegNet", "DeepLabV2", "DRNC26"]
