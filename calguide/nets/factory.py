"""Build ADM networks from guided-diffusion's command-line flags.

The flag names and defaults are those of ``create_model`` / ``create_classifier`` in
openai/guided-diffusion, so the flag sets published next to the checkpoints can be passed
verbatim. Unknown flags are rejected rather than ignored: a typo would otherwise silently
build a model whose layout no longer matches the weight file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from calguide.nets.unet import POOL_TYPES, EncoderUNetModel, UNetModel

__all__ = [
    "CLASSIFIER_FLAG_DEFAULTS",
    "UNET_FLAG_DEFAULTS",
    "create_adm_classifier",
    "create_unet",
    "default_channel_mult",
    "parse_attention_resolutions",
    "parse_channel_mult",
]

_REQUIRED_UNET = ("image_size", "num_channels", "num_res_blocks")

#: Optional ``create_unet`` flags with guided-diffusion's ``create_model`` defaults, plus
#: ``num_classes``/``in_channels`` (fixed to 1000/3 in ADM) for small or grey-scale models.
UNET_FLAG_DEFAULTS: dict[str, Any] = {
    "channel_mult": "",
    "learn_sigma": False,
    "class_cond": False,
    "use_checkpoint": False,
    "attention_resolutions": "16",
    "num_heads": 1,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": False,
    "dropout": 0.0,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "num_classes": 1000,
    "in_channels": 3,
}

#: Optional ``create_adm_classifier`` flags with guided-diffusion's ``classifier_defaults``.
#: ``classifier_channel_mult`` and ``classifier_num_head_channels`` are calguide extensions
#: (ADM hard-codes them) so tiny classifiers can be built; their defaults reproduce ADM.
CLASSIFIER_FLAG_DEFAULTS: dict[str, Any] = {
    "classifier_use_fp16": False,
    "classifier_width": 128,
    "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True,
    "classifier_pool": "attention",
    "classifier_channel_mult": "",
    "classifier_num_head_channels": 64,
    "num_classes": 1000,
    "in_channels": 3,
}

# ADM's per-resolution channel multipliers; 32 is improved-diffusion's CIFAR-10 setting.
_DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """ADM's channel multipliers for ``image_size``; other sizes must pass ``channel_mult``."""
    try:
        return _DEFAULT_CHANNEL_MULT[image_size]
    except KeyError:
        raise ValueError(
            f"no default channel_mult for image_size={image_size} "
            f"(known: {sorted(_DEFAULT_CHANNEL_MULT)}); pass channel_mult, e.g. '1,2,2'"
        ) from None


def _number(token: str, flag: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise ValueError(f"{flag}: cannot parse {token!r} as a number") from None
    return int(value) if value.is_integer() else value


def parse_channel_mult(
    channel_mult: str | Sequence[float], image_size: int, *, flag: str = "channel_mult"
) -> tuple[float, ...]:
    """Accept ``""`` (ADM default), ``"1,2,2"`` or a sequence; return a tuple of numbers."""
    if isinstance(channel_mult, str):
        text = channel_mult.strip()
        if not text:
            return default_channel_mult(image_size)
        values = tuple(_number(tok.strip(), flag) for tok in text.split(",") if tok.strip())
    elif isinstance(channel_mult, Sequence):
        values = tuple(_number(str(v), flag) for v in channel_mult)
    else:
        raise ValueError(f"{flag} must be a comma string or a sequence, got {channel_mult!r}")
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{flag} must be non-empty and positive, got {channel_mult!r}")
    return values


def parse_attention_resolutions(
    resolutions: str | int | Sequence[int], image_size: int, *, flag: str = "attention_resolutions"
) -> tuple[int, ...]:
    """Turn ADM's resolution list (``"32,16,8"``) into downsample rates ``image_size // res``."""
    if isinstance(resolutions, str):
        tokens = [t.strip() for t in resolutions.split(",") if t.strip()]
    elif isinstance(resolutions, int):
        tokens = [str(resolutions)]
    elif isinstance(resolutions, Sequence):
        tokens = [str(r) for r in resolutions]
    else:
        raise ValueError(f"{flag} must be a comma string or a list of ints, got {resolutions!r}")
    rates = []
    for tok in tokens:
        try:
            res = int(tok)
        except ValueError:
            raise ValueError(f"{flag}: {tok!r} is not an integer resolution") from None
        if res < 1 or image_size % res:
            raise ValueError(f"{flag}: resolution {res} does not divide image_size={image_size}")
        rates.append(image_size // res)
    return tuple(rates)


def _resolve(
    flags: Mapping[str, Any], required: Sequence[str], defaults: Mapping[str, Any], name: str
) -> dict[str, Any]:
    """Merge ``flags`` over ``defaults``; reject unknown and missing flags, listing valid ones."""
    accepted = (*required, *defaults)
    unknown = sorted(set(flags) - set(accepted))
    if unknown:
        raise TypeError(f"{name}: unknown flag(s) {unknown}; accepted flags: {list(accepted)}")
    missing = [k for k in required if k not in flags]
    if missing:
        raise TypeError(f"{name}: missing required flag(s) {missing}; required: {list(required)}")
    return {**defaults, **flags}


def _positive_int(value: Any, flag: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    return int(value)


def create_unet(**flags: Any) -> UNetModel:
    """Build ADM's diffusion U-Net from ``create_model`` flags.

    Required: ``image_size``, ``num_channels``, ``num_res_blocks``. Optional flags and their
    defaults are in :data:`UNET_FLAG_DEFAULTS`. ``learn_sigma`` doubles the output channels.
    """
    f = _resolve(flags, _REQUIRED_UNET, UNET_FLAG_DEFAULTS, "create_unet")
    image_size = _positive_int(f["image_size"], "image_size")
    num_channels = _positive_int(f["num_channels"], "num_channels")
    in_channels = _positive_int(f["in_channels"], "in_channels")
    num_classes = None
    if f["class_cond"]:
        if f["num_classes"] is None or isinstance(f["num_classes"], bool) or f["num_classes"] < 1:
            raise ValueError(
                f"class_cond=True needs num_classes >= 1, got num_classes={f['num_classes']!r}"
            )
        num_classes = int(f["num_classes"])
    if not 0.0 <= float(f["dropout"]) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {f['dropout']!r}")

    model = UNetModel(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=num_channels,
        out_channels=in_channels * (2 if f["learn_sigma"] else 1),
        num_res_blocks=_positive_int(f["num_res_blocks"], "num_res_blocks"),
        attention_resolutions=parse_attention_resolutions(f["attention_resolutions"], image_size),
        dropout=float(f["dropout"]),
        channel_mult=parse_channel_mult(f["channel_mult"], image_size),
        num_classes=num_classes,
        use_checkpoint=bool(f["use_checkpoint"]),
        use_fp16=bool(f["use_fp16"]),
        num_heads=int(f["num_heads"]),
        num_head_channels=int(f["num_head_channels"]),
        num_heads_upsample=int(f["num_heads_upsample"]),
        use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
        resblock_updown=bool(f["resblock_updown"]),
        use_new_attention_order=bool(f["use_new_attention_order"]),
    )
    model.adm_flags = f  # the resolved flags, for logging / reproducibility
    return model


def create_adm_classifier(**flags: Any) -> EncoderUNetModel:
    """Build ADM's noisy-image classifier from ``create_classifier`` flags.

    Required: ``image_size``. ``use_fp16`` is accepted as an alias of ``classifier_use_fp16``.
    Optional flags and their defaults are in :data:`CLASSIFIER_FLAG_DEFAULTS`.
    """
    flags = dict(flags)
    if "use_fp16" in flags:
        alias = flags.pop("use_fp16")
        if "classifier_use_fp16" in flags and bool(flags["classifier_use_fp16"]) != bool(alias):
            raise ValueError("use_fp16 and classifier_use_fp16 disagree; pass only one of them")
        flags["classifier_use_fp16"] = alias
    f = _resolve(flags, ("image_size",), CLASSIFIER_FLAG_DEFAULTS, "create_adm_classifier")
    image_size = _positive_int(f["image_size"], "image_size")
    pool = f["classifier_pool"]
    if pool not in POOL_TYPES:
        raise ValueError(f"classifier_pool must be one of {POOL_TYPES}, got {pool!r}")

    model = EncoderUNetModel(
        image_size=image_size,
        in_channels=_positive_int(f["in_channels"], "in_channels"),
        model_channels=_positive_int(f["classifier_width"], "classifier_width"),
        out_channels=_positive_int(f["num_classes"], "num_classes"),
        num_res_blocks=_positive_int(f["classifier_depth"], "classifier_depth"),
        attention_resolutions=parse_attention_resolutions(
            f["classifier_attention_resolutions"],
            image_size,
            flag="classifier_attention_resolutions",
        ),
        channel_mult=parse_channel_mult(
            f["classifier_channel_mult"], image_size, flag="classifier_channel_mult"
        ),
        use_fp16=bool(f["classifier_use_fp16"]),
        num_head_channels=int(f["classifier_num_head_channels"]),
        use_scale_shift_norm=bool(f["classifier_use_scale_shift_norm"]),
        resblock_updown=bool(f["classifier_resblock_updown"]),
        pool=pool,
    )
    model.adm_flags = f
    return model
