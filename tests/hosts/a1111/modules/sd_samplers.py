"""Stand-in for modules.sd_samplers / sd_samplers_kdiffusion / sd_samplers_cfg_denoiser (A1111 1.10) and
Forge's CFGDenoiser.forward + backend sampling_function: create_sampler, KDiffusionSampler (get_sigmas,
sample, sample_img2img, model_wrap) and a CFG denoiser with the published row layout and callbacks
(A1111: cond rows first, uncond rows last, a skipped uncond replaced by the cond rows; Forge: no
cfg_denoised, skipped uncond -> cond_scale 1 -> zero uncond_denoised). The sampler is k-diffusion's Euler
with the "Automatic" (uniform) schedule; no batch_cond_uncond=False path, no padding, no edit models."""
import math

import torch

from denoisers import KDiffusionCompVisDenoiser
from modules import processing, prompt_parser, shared
from modules.script_callbacks import CFGDenoisedParams, CFGDenoiserParams, cfg_denoised_callback, cfg_denoiser_callback


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler
        self.step = 0
        self.total_steps = None

    @property
    def inner_model(self):
        return self.sampler.model_wrap

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        if processing.FORGE:
            return self.forge_forward(x, sigma, uncond, tensor, conds_list, cond_scale, s_min_uncond, image_cond)
        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]
        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [sigma])
        image_cond_in = torch.cat([torch.stack([image_cond[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [image_cond])
        denoiser_params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, shared.state.sampling_step,
                                            shared.state.sampling_steps, tensor, uncond, self)
        cfg_denoiser_callback(denoiser_params)
        x_in, image_cond_in, sigma_in = denoiser_params.x, denoiser_params.image_cond, denoiser_params.sigma
        tensor, uncond = denoiser_params.text_cond, denoiser_params.text_uncond
        skip_uncond = False
        if shared.opts.skip_early_cond != 0.0 and self.step / self.total_steps <= shared.opts.skip_early_cond:
            skip_uncond = True
        elif self.step % 2 and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            skip_uncond = True
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]
            cond_in = tensor
        else:
            cond_in = torch.cat([tensor, uncond])
        x_out = self.inner_model(x_in, sigma_in, cond={"c_crossattn": [cond_in], "c_concat": [image_cond_in]})
        denoised_image_indexes = [c[0][0] for c in conds_list]
        if skip_uncond:  # upstream puts the cond prediction where the skipped uncond one would be
            x_out = torch.cat([x_out, torch.cat([x_out[i:i + 1] for i in denoised_image_indexes])])
        cfg_denoised_callback(CFGDenoisedParams(x_out, shared.state.sampling_step, shared.state.sampling_steps, self.inner_model))
        denoised = self.combine_denoised(x_out, conds_list, uncond, 1.0 if skip_uncond else cond_scale)
        self.step += 1
        return denoised

    def forge_forward(self, x, sigma, uncond, tensor, conds_list, cond_scale, s_min_uncond, image_cond):
        """Forge: the callback gets the un-repeated x/sigma; skipped-uncond steps run at cond_scale 1 (CFG-1
        optimization); cond/uncond x0 through unet.model.apply_model; post-CFG hooks; no cfg_denoised."""
        denoiser_params = CFGDenoiserParams(x, image_cond, sigma, shared.state.sampling_step, shared.state.sampling_steps,
                                            tensor, uncond, self)
        cfg_denoiser_callback(denoiser_params)
        if shared.opts.skip_early_cond > 0 and self.step / self.total_steps <= shared.opts.skip_early_cond:
            cond_scale = 1.0
        elif self.step % 2 and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            cond_scale = 1.0
        x, sigma = denoiser_params.x, denoiser_params.sigma
        tensor, uncond = denoiser_params.text_cond, denoiser_params.text_uncond
        unet = self.sampler.sd_model.forge_objects.unet
        model_options = unet.model_options
        rows = torch.tensor([c[0][0] for c in conds_list])
        skip = math.isclose(cond_scale, 1.0) and model_options.get("disable_cfg1_optimization", False) == False  # noqa: E712
        cond_pred = unet.model.apply_model(x, sigma, c_crossattn=tensor[rows])
        # calc_cond_uncond_batch: an uncond that was not run comes back as zeros (0 / 1e-37), not None
        uncond_pred = torch.zeros_like(x) if skip else unet.model.apply_model(x, sigma, c_crossattn=uncond)
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
        for fn in model_options.get("sampler_post_cfg_function", []):
            args = {"denoised": cfg_result, "cond": tensor, "uncond": uncond, "model": unet.model,
                    "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": sigma,
                    "model_options": model_options, "input": x}
            cfg_result = fn(args)
        self.step += 1
        return cfg_result


class KDiffusionSampler:
    def __init__(self, funcname, sd_model):
        self.funcname = funcname
        self.sd_model = sd_model
        self.model_wrap_cfg = CFGDenoiser(self)
        self.model_wrap = KDiffusionCompVisDenoiser(sd_model.unet, sd_model.alphas_cumprod)
        self.sample_calls = 0

    def get_sigmas(self, p, steps):
        """k-diffusion's DiscreteSchedule.get_sigmas(n): uniform in t from t_max to 0, then a zero."""
        t_max = len(self.model_wrap.sigmas) - 1
        t = torch.linspace(t_max, 0, steps)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.model_wrap.log_sigmas[low] + w * self.model_wrap.log_sigmas[high]
        return torch.cat([log_sigma.exp(), torch.zeros(1)])

    def _euler(self, p, x, sigmas, conditioning, unconditional_conditioning, image_conditioning):
        s_in = x.new_ones([x.shape[0]])
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.total_steps = len(sigmas) - 1
        shared.state.sampling_steps = len(sigmas) - 1
        for i in range(len(sigmas) - 1):
            shared.state.sampling_step = i
            denoised = self.model_wrap_cfg(x, sigmas[i] * s_in, unconditional_conditioning, conditioning,
                                           p.cfg_scale, getattr(p, "s_min_uncond", 0.0) or 0.0, image_conditioning)
            d = (x - denoised) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
        return x

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        self.sample_calls += 1
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        if shared.opts.sgm_noise_multiplier:
            p.extra_generation_params["SGM noise multiplier"] = True
            x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        else:
            x = x * sigmas[0]
        return self._euler(p, x, sigmas, conditioning, unconditional_conditioning, image_conditioning)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
        sigmas = self.get_sigmas(p, steps)[steps - t_enc - 1:]
        xi = x + noise * sigmas[0]
        return self._euler(p, xi, sigmas, conditioning, unconditional_conditioning, image_conditioning)


created = []


def create_sampler(name, model):
    sampler = KDiffusionSampler(name, model)
    created.append(sampler)
    return sampler
