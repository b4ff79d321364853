"""Stand-in for modules.processing (A1111 1.10, and Forge with FORGE = True): the processing classes,
process_images' hook order, create_infotext's handling of extra_generation_params (lists indexed, callables
called with its locals), quoting, Processed and decode_latent_batch.

Forge differences modelled: sampling under torch.inference_mode(); ``p.modified_noise`` replaces the noise
after process_before_every_sampling (txt2img, hires pass, img2img); ``sd_model.forge_objects`` is reset from
``forge_objects_after_applying_lora`` before every sampling; the hires pass calls
process_before_every_sampling twice (once before and once after that reset)."""
import json

import numpy as np
import torch
from PIL import Image

from modules import prompt_parser, scripts, shared

FORGE = False


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


class DecodedSamples(list):
    already_decoded = True


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    samples = DecodedSamples()
    for i in range(batch.shape[0]):
        sample = model.pipe.vae.decode(batch[i:i + 1].float() / model.pipe.vae.config.scaling_factor, return_dict=False)[0][0]
        samples.append(sample.to(target_device) if target_device is not None else sample)
    return samples


class StableDiffusionProcessing:
    def __init__(self, sd_model=None, prompt="", negative_prompt="", seed=0, steps=4, cfg_scale=7.0, batch_size=1,
                 n_iter=1, sampler_name="Euler", width=64, height=64, script_args=(), scripts=None, outpath_samples=""):
        self.sd_model = sd_model
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.seed = seed
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.sampler_name = sampler_name
        self.width, self.height = width, height
        self.script_args = list(script_args)
        self.scripts = scripts
        self.outpath_samples = outpath_samples
        self.extra_generation_params = {}
        self.comments = {}
        self.is_hr_pass = False
        self.iteration = 0
        self.batch_index = 0
        if FORGE:
            self.modified_noise = None

    def comment(self, text):
        self.comments[text] = 1

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def txt2img_image_conditioning(self, x, width=None, height=None):
        return x.new_zeros(x.shape[0], 5, 1, 1)

    def setup_prompts(self):
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt] * (self.batch_size * self.n_iter)
        self.all_prompts = prompts
        self.all_negative_prompts = [self.negative_prompt] * len(prompts)
        self.all_seeds = [int(self.seed) + x for x in range(len(prompts))]
        self.all_subseeds = list(self.all_seeds)
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def setup_conds(self):
        with torch.no_grad():
            c, u = self.sd_model.pipe.encode_prompt(self.prompts, "cpu", 1, True, self.negative_prompts)
        self.c = prompt_parser.MulticondLearnedConditioning(
            shape=(len(self.prompts),),
            batch=[[prompt_parser.ComposableScheduledPromptConditioning([prompt_parser.ScheduledPromptConditioning(self.steps, c[i])], 1.0)]
                   for i in range(len(self.prompts))])
        self.uc = [[prompt_parser.ScheduledPromptConditioning(self.steps, u[i])] for i in range(len(self.prompts))]

    def rng_next(self):
        shape = (4, self.height // 8, self.width // 8)
        return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in self.seeds])


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, denoising_strength=0.5, hr_second_pass_steps=2, **kwargs):
        super().__init__(**kwargs)
        self.enable_hr = enable_hr
        self.denoising_strength = denoising_strength
        self.hr_second_pass_steps = hr_second_pass_steps

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        from modules import sd_samplers

        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng_next()
        if FORGE:
            self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
        if FORGE and self.modified_noise is not None:
            x = self.modified_noise
            self.modified_noise = None
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning, image_conditioning=self.txt2img_image_conditioning(x))
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        """Latent upscale mode (scale 1): the second pass re-noises the first pass' latents; returns decoded
        samples (``already_decoded``), as upstream."""
        from modules import sd_samplers

        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        image_conditioning = self.txt2img_image_conditioning(samples)
        noise = self.rng_next()
        self.hr_c, self.hr_uc = self.c, self.uc
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        if FORGE:
            self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
            if self.scripts is not None:
                self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
            if self.modified_noise is not None:
                noise = self.modified_noise
                self.modified_noise = None
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc, steps=self.hr_second_pass_steps or self.steps,
                                              image_conditioning=image_conditioning)
        self.sampler = None
        decoded_samples = decode_latent_batch(self.sd_model, samples, target_device=torch.device("cpu"), check_for_nans=True)
        self.is_hr_pass = False
        return decoded_samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, init_images=None, denoising_strength=0.75, **kwargs):
        super().__init__(**kwargs)
        self.init_images = init_images or []
        self.denoising_strength = denoising_strength
        self.initial_noise_multiplier = 1.0

    def init(self, all_prompts, all_seeds, all_subseeds):
        """Upstream creates the sampler and encodes the init images here (once per job); the stand-in's
        init latent is zeros."""
        from modules import sd_samplers

        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        self.init_latent = torch.zeros(self.batch_size, 4, self.height // 8, self.width // 8)
        self.image_conditioning = self.init_latent.new_zeros(self.init_latent.shape[0], 5, 1, 1)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng_next()
        if FORGE:
            self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning)
        if FORGE and self.modified_noise is not None:
            x = self.modified_noise
            self.modified_noise = None
        return self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                           image_conditioning=self.image_conditioning)


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.batch_size = p.batch_size
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or getattr(p, "all_prompts", None) or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or getattr(p, "all_negative_prompts", None) or [self.negative_prompt]
        self.all_seeds = all_seeds or getattr(p, "all_seeds", None) or [self.seed]
        self.all_subseeds = all_subseeds or getattr(p, "all_subseeds", None) or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)

    def js(self):
        obj = {"prompt": self.all_prompts[0], "all_prompts": self.all_prompts, "seed": self.seed, "all_seeds": self.all_seeds,
               "extra_generation_params": self.extra_generation_params, "index_of_first_image": self.index_of_first_image,
               "infotexts": self.infotexts}
        return json.dumps(obj, default=lambda o: None)

    def infotext(self, p, index):
        """Upstream: a job-wide index (used for params.txt and the API's per-image infotext)."""
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                               position_in_batch=index % self.batch_size, iteration=index // self.batch_size)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            generation_params[key] = None
    generation_params_text = ", ".join([k if k == v else f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None])
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip()


def process_images(p):
    """process_images + process_images_inner: hook order as published; A1111 samples under no_grad, Forge
    under inference_mode."""
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts, output_images = [], []
    grad_ctx = torch.inference_mode() if FORGE else torch.no_grad()
    with grad_ctx:
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        for n in range(p.n_iter):
            p.iteration = n
            if FORGE:
                p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.setup_conds()
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds,
                               subseed_strength=0.0, prompts=p.prompts)
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples
            if getattr(samples, "already_decoded", False):
                x_samples = samples
            else:
                x_samples = decode_latent_batch(p.sd_model, samples, target_device=torch.device("cpu"), check_for_nans=True)
            x_samples = torch.stack(x_samples).float()
            x_samples = torch.clamp((x_samples + 1.0) / 2.0, min=0.0, max=1.0)

            def infotext(index=0, use_main_prompt=False):
                return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt, index=index,
                                       all_negative_prompts=p.negative_prompts)

            for i, x_sample in enumerate(x_samples):
                p.batch_index = i
                x_sample = (255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                image = Image.fromarray(x_sample)
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                text = infotext(i)
                infotexts.append(text)
                if shared.opts.enable_pnginfo:
                    image.info["parameters"] = text
                output_images.append(image)
    res = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0], subseed=p.all_subseeds[0],
                    infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
