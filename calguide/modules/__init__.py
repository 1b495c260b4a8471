"""The Lightning shells around the math: LightningModules for training, calibrating and sampling,
and the callbacks (generative metrics, EMA, sample grids)."""
