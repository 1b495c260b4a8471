"""The dataset registry: one entry per image source, looked up by name (``data.loader``).

A source is a *builder*: a function that takes a :class:`DatasetRequest` (the plain values a
config asks for) and returns :class:`DatasetSplits` (train and held-out datasets yielding
``(image, label)`` with float32 C×H×W images in [−1, 1] and int64 labels, the number of classes
and the image shape). Registering it is all :class:`~calguide.data.ImageDataModule` needs::

    from calguide.data import DatasetRequest, DatasetSplits, register_dataset

    @register_dataset("my_source", requires={"root": "a folder"})
    def build_my_source(request: DatasetRequest) -> DatasetSplits:
        ...

The built-in sources (``digits``, ``cifar10``, ``image_folder``, ``npz``) register themselves
when :mod:`calguide.data` is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import overload

from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "DatasetBuilder",
    "DatasetEntry",
    "DatasetRequest",
    "DatasetSplits",
    "dataset_names",
    "get_dataset",
    "register_dataset",
    "unregister_dataset",
]


@dataclass(frozen=True)
class DatasetRequest:
    """What a config asks of a source. ``image_size`` / ``channels`` of ``None`` mean "the
    data's own"; a builder that cannot honour a given value raises instead of differing."""

    image_size: int | None = None
    channels: int | None = None
    root: str | None = None
    path: str | None = None
    heldout_fraction: float = 0.2
    split_seed: int = 0
    download: bool = False

    def root_path(self) -> Path:
        """``root`` as a path, ``~`` expanded."""
        return Path(str(self.root)).expanduser()

    def require_size(self, native: int, what: str) -> None:
        """Reject an ``image_size`` the source cannot provide (no silent resizing)."""
        if self.image_size is not None and self.image_size != native:
            raise ValueError(f"{what} has image size {native}, but image_size={self.image_size}")


@dataclass(frozen=True)
class DatasetSplits:
    """A built source: train and held-out datasets, class count and (C, H, W) image shape."""

    train: Dataset
    heldout: Dataset
    num_classes: int
    image_shape: tuple[int, int, int]


DatasetBuilder = Callable[[DatasetRequest], DatasetSplits]

_REQUEST_FIELDS = tuple(f.name for f in fields(DatasetRequest))


@dataclass(frozen=True)
class DatasetEntry:
    """One registered source.

    ``requires`` pairs request fields that must not be ``None`` with a hint for the error;
    ``prepare`` runs once before building (rank 0 only under Lightning), e.g. a download;
    ``num_classes``, when known without building, lets the data module answer cheaply.
    """

    name: str
    build: DatasetBuilder
    prepare: Callable[[DatasetRequest], None] | None = None
    requires: tuple[tuple[str, str | None], ...] = ()
    num_classes: int | None = None

    def check(self, request: DatasetRequest) -> None:
        """Raise ``ValueError`` for the first required request value that is missing."""
        for key, hint in self.requires:
            if getattr(request, key) is None:
                suffix = f" ({hint})" if hint else ""
                raise ValueError(f"dataset {self.name!r} needs `{key}`{suffix}")


_REGISTRY: dict[str, DatasetEntry] = {}

DATASETS: Mapping[str, DatasetEntry] = MappingProxyType(_REGISTRY)
"""Read-only live view of the registry (name -> entry)."""


def dataset_names() -> tuple[str, ...]:
    """Registered dataset names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_dataset(name: str) -> DatasetEntry:
    """The entry registered as ``name``; a ``ValueError`` lists the registered names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown dataset name {name!r}; allowed names: {list(dataset_names())}"
        ) from None


@overload
def register_dataset(
    name: str,
    build: None = None,
    *,
    prepare: Callable[[DatasetRequest], None] | None = None,
    requires: Mapping[str, str | None] | None = None,
    num_classes: int | None = None,
    overwrite: bool = False,
) -> Callable[[DatasetBuilder], DatasetBuilder]: ...
@overload
def register_dataset(
    name: str,
    build: DatasetBuilder,
    *,
    prepare: Callable[[DatasetRequest], None] | None = None,
    requires: Mapping[str, str | None] | None = None,
    num_classes: int | None = None,
    overwrite: bool = False,
) -> DatasetBuilder: ...
def register_dataset(
    name: str,
    build: DatasetBuilder | None = None,
    *,
    prepare: Callable[[DatasetRequest], None] | None = None,
    requires: Mapping[str, str | None] | None = None,
    num_classes: int | None = None,
    overwrite: bool = False,
) -> DatasetBuilder | Callable[[DatasetBuilder], DatasetBuilder]:
    """Register the builder ``build`` as ``name``; without ``build``, return a decorator that does.

    A name can be registered once unless ``overwrite`` is set, so two sources never silently
    shadow each other. The builder is returned unchanged.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    requires = dict(requires or {})
    unknown = sorted(set(requires) - set(_REQUEST_FIELDS))
    if unknown:
        raise ValueError(
            f"dataset {name!r}: requires names unknown request field(s) {unknown}; "
            f"allowed: {list(_REQUEST_FIELDS)}"
        )
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"dataset {name!r}: num_classes must be an int >= 1, got {num_classes!r}")

    def _register(fn: DatasetBuilder) -> DatasetBuilder:
        if not callable(fn):
            raise TypeError(f"dataset {name!r}: the builder must be callable, got {fn!r}")
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"dataset {name!r} is already registered (pass overwrite=True)")
        _REGISTRY[name] = DatasetEntry(
            name=name,
            build=fn,
            prepare=prepare,
            requires=tuple(requires.items()),
            num_classes=num_classes,
        )
        return fn

    return _register if build is None else _register(build)


def unregister_dataset(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive use)."""
    get_dataset(name)
    del _REGISTRY[name]
