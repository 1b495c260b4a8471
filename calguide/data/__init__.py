"""Image datasets yielding ``(image, label)``: float32 C×H×W in [−1, 1] and an int64 label.

Every source is an entry of the dataset registry (:func:`register_dataset`); importing this
package registers the built-in ones: ``digits``, ``cifar10``, ``image_folder`` and ``npz``.
"""

from calguide.data._arrays import ArrayImageDataset, stratified_split_indices
from calguide.data.cifar10 import cifar10_dataset
from calguide.data.datamodule import ImageDataModule
from calguide.data.digits import digits_split, load_digits_tensors
from calguide.data.image_folder import ImageFolderDataset, NpzImageDataset
from calguide.data.registry import (
    DatasetRequest,
    DatasetSplits,
    dataset_names,
    get_dataset,
    register_dataset,
    unregister_dataset,
)

__all__ = [
    "ArrayImageDataset",
    "DatasetRequest",
    "DatasetSplits",
    "ImageDataModule",
    "ImageFolderDataset",
    "NpzImageDataset",
    "cifar10_dataset",
    "dataset_names",
    "digits_split",
    "get_dataset",
    "load_digits_tensors",
    "register_dataset",
    "stratified_split_indices",
    "unregister_dataset",
]
