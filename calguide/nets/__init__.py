"""Networks whose state dicts match published weights (ADM U-Nets/classifiers, ResNets)."""

from calguide.nets.checkpoint import (
    StateDictMismatchError,
    extract_state_dict,
    load_state_dict_file,
    load_weights,
    read_weights_file,
    state_dict_layout,
)
from calguide.nets.factory import create_adm_classifier, create_unet
from calguide.nets.resnet import (
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    small_resnet,
    swap_relu_for_softplus,
)
from calguide.nets.unet import EncoderUNetModel, UNetModel

__all__ = [
    "EncoderUNetModel",
    "StateDictMismatchError",
    "UNetModel",
    "create_adm_classifier",
    "create_unet",
    "extract_state_dict",
    "load_state_dict_file",
    "load_weights",
    "read_weights_file",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "small_resnet",
    "state_dict_layout",
    "swap_relu_for_softplus",
]
