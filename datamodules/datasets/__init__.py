"""Dataset classes, one per official layout. `DATASETS` maps config names to classes."""
from datamodules.datasets.base import Sample, SegmentationDataset
from datamodules.datasets.cityscapes import CityscapesDataset
from datamodules.datasets.gta5 import GTA5Dataset
from datamodules.datasets.synthia import SynthiaDataset

DATASETS = {"gta5": GTA5Dataset, "cityscapes": CityscapesDataset, "synthia": SynthiaDataset}

__all__ = ["Sample", "SegmentationDataset", "GTA5Dataset", "CityscapesDataset", "SynthiaDataset",
           "DATASETS"]
