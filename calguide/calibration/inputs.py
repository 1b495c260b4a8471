"""What a classifier is trained or calibrated on (``inputs.mode`` of ``calguide-calibrate``):
clean images, noisy x_t with its timestep (a noise-aware classifier), or the denoiser's x̂₀ from
x_t (an off-the-shelf classifier, as guidance feeds it)."""

INPUT_MODES = ("clean", "noisy", "x0")
