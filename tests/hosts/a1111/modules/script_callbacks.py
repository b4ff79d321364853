"""Stand-in for modules.script_callbacks (A1111 1.10): the parameter classes and registries we use."""
import dataclasses


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = None


callback_map = dict(callbacks_ui_tabs=[], callbacks_cfg_denoiser=[], callbacks_cfg_denoised=[])


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def add_callback(callbacks, fun, *, name=None, category="unknown"):
    callbacks.append(ScriptCallback("standin", fun, name))


def ui_tabs_callback():
    res = []
    for c in callback_map["callbacks_ui_tabs"]:
        res += c.callback() or []
    return res


def cfg_denoiser_callback(params):
    for c in callback_map["callbacks_cfg_denoiser"]:
        c.callback(params)


def cfg_denoised_callback(params):
    for c in callback_map["callbacks_cfg_denoised"]:
        c.callback(params)


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_cfg_denoiser(callback, *, name=None):
    add_callback(callback_map["callbacks_cfg_denoiser"], callback, name=name, category="cfg_denoiser")


def on_cfg_denoised(callback, *, name=None):
    add_callback(callback_map["callbacks_cfg_denoised"], callback, name=name, category="cfg_denoised")
