"""Stand-in for modules.shared: the opts and state fields the sampling path reads (defaults as in A1111 1.10)."""
from types import SimpleNamespace

opts = SimpleNamespace(sgm_noise_multiplier=False, outdir_samples="", enable_pnginfo=True, skip_early_cond=0.0,
                       s_min_uncond=0.0)
state = SimpleNamespace(sampling_step=0, sampling_steps=0, interrupted=False, skipped=False)
sd_model = None
