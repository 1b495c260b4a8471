"""The jobs the console scripts run: build through the assembly, run a Trainer, write outputs."""
