"""Image classification data: loaders for Fashion-MNIST, digits, CIFAR-10/100 and class folders.

Nothing here touches the network unless a loader is called with ``download=True``.
"""

from padnet.data.cifar import read_cifar_binary
from padnet.data.download import download
from padnet.data.idx import read_idx
from padnet.data.images import ImageData
from padnet.data.loader import make_loader
from padnet.data.registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "ImageData",
    "download",
    "load_dataset",
    "make_loader",
    "read_cifar_binary",
    "read_idx",
]
