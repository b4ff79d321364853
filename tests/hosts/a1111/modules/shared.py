"""Stand-in for modules.shared: opts and state."""
from types import SimpleNamespace

opts = SimpleNamespace(sgm_noise_multiplier=False, outdir_samples="", enable_pnginfo=True)
state = SimpleNamespace(sampling_step=0, sampling_steps=0, interrupted=False, skipped=False)
sd_model = None
