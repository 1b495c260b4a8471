"""The denoiser training job (``calguide-train``) and its callbacks."""
