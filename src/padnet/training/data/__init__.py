"""Image classification data: loaders for Fashion-MNIST, digits, CIFAR-10/100 and class folders.

Nothing here touches the network unless a loader is called with `download=True`.
"""

from padnet.training.data.cifar import read_cifar_binary
from padnet.training.data.download import download
from padnet.training.data.idx import read_idx
from padnet.training.data.images import ImageData
from padnet.training.data.loader import make_loader
from padnet.training.data.registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "ImageData",
    "download",
    "load_dataset",
    "make_loader",
    "read_cifar_binary",
    "read_idx",
]
