"""Image datasets yielding ``(image, label)``: float32 C×H×W in [−1, 1] and an int64 label."""

from calguide.data._arrays import ArrayImageDataset, stratified_split_indices
from calguide.data.cifar10 import cifar10_dataset
from calguide.data.datamodule import DATASET_NAMES, ImageDataModule
from calguide.data.digits import digits_split, load_digits_tensors
from calguide.data.image_folder import ImageFolderDataset, NpzImageDataset

__all__ = [
    "DATASET_NAMES",
    "ArrayImageDataset",
    "ImageDataModule",
    "ImageFolderDataset",
    "NpzImageDataset",
    "cifar10_dataset",
    "digits_split",
    "load_digits_tensors",
    "stratified_split_indices",
]
