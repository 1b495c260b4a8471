"""Checked spec -> runtime objects, in one place, each built once: :mod:`.models` (data module,
denoiser, chain, classifiers), :mod:`.sampling` (sampler, guidance, sampling module),
:mod:`.calibration`, :mod:`.metrics`, :mod:`.machine` (the machine, loggers, Trainer) and
:mod:`.requirements` (the files a run reads). Nothing below this layer reads a config; nothing
here runs a job."""

from calguide.assembly.calibration import CalibrationSetup, calibration_setup, inputs_denoiser
from calguide.assembly.machine import check_machine, device_name, loggers, runs_on_gpu, trainer
from calguide.assembly.metrics import metrics_callback
from calguide.assembly.models import (
    Denoiser,
    chain,
    classifier,
    datamodule,
    denoiser,
    denoiser_path,
    float32_off_gpu,
    load_denoiser_file,
)
from calguide.assembly.sampling import (
    SamplingSetup,
    guidance_of,
    sampler,
    sampling_setup,
)

__all__ = [
    "CalibrationSetup",
    "Denoiser",
    "SamplingSetup",
    "calibration_setup",
    "chain",
    "check_machine",
    "classifier",
    "datamodule",
    "denoiser",
    "denoiser_path",
    "device_name",
    "float32_off_gpu",
    "guidance_of",
    "inputs_denoiser",
    "load_denoiser_file",
    "loggers",
    "metrics_callback",
    "runs_on_gpu",
    "sampler",
    "sampling_setup",
    "trainer",
]
