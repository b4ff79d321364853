"""Option values shared by the engine and the command line, importable without torch (fast ``--help``)."""
from __future__ import annotations

# scheduler name -> (diffusers class, config overrides)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
}
# scheduler name -> A1111's sampler name (infotext "Sampler:", the app's menu)
SCHEDULER_LABELS = {"ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a", "dpm": "DPM++ 2M", "dpm_karras": "DPM++ 2M Karras"}

# spectra (core/spectra.py, spectra_operators.py, spectra_solvers.py)
WHICH_CHOICES = ("cond", "uncond", "delta")
HVP_CHOICES = ("exact", "fd")
METHOD_CHOICES = ("arnoldi", "lanczos", "dense", "slq")
PRODUCT_CHOICES = ("forward", "reverse")
TARGET_CHOICES = ("magnitude", "most_negative", "most_positive")
