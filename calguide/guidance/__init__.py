"""Classifier guidance: the f-divergence registry, strategies, scale schedules, the guidance
classifier wrapper and the sampler hook that ties them together."""

from calguide.guidance.classifier import IMAGENET_MEAN, IMAGENET_STD, GuidanceClassifier
from calguide.guidance.divergences import (
    DIVERGENCES,
    FDivergence,
    divergence,
    divergence_names,
    f_divergence,
    label_smoothed_target,
    log_label_smoothed_target,
    register_divergence,
    unregister_divergence,
)
from calguide.guidance.hook import (
    BoundGuidance,
    ClassifierGuidance,
    GuidanceDiagnostics,
    make_guidance,
)
from calguide.guidance.schedules import SCHEDULES, build_schedule
from calguide.guidance.strategies import (
    STRATEGIES,
    DivergenceGuidance,
    Entropy,
    GuidanceStrategy,
    NoGuidance,
    Tilted,
    Vanilla,
    build_strategy,
    entropy,
    guided_score,
    is_active,
    strategy_names,
    target_log_prob,
    unregister_strategy,
)

__all__ = [
    "DIVERGENCES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SCHEDULES",
    "STRATEGIES",
    "BoundGuidance",
    "ClassifierGuidance",
    "DivergenceGuidance",
    "Entropy",
    "FDivergence",
    "GuidanceClassifier",
    "GuidanceDiagnostics",
    "GuidanceStrategy",
    "NoGuidance",
    "Tilted",
    "Vanilla",
    "build_schedule",
    "build_strategy",
    "divergence",
    "divergence_names",
    "entropy",
    "f_divergence",
    "guided_score",
    "is_active",
    "label_smoothed_target",
    "log_label_smoothed_target",
    "make_guidance",
    "register_divergence",
    "strategy_names",
    "target_log_prob",
    "unregister_divergence",
    "unregister_strategy",
]
