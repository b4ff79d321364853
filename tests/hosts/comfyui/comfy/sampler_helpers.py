"""Stand-in for comfy.sampler_helpers: convert_cond (CONDITIONING [[tensor, dict]] -> list of cond dicts) and
prepare_sampling (load the model, return the BaseModel the guider calls), as published; no additional models
(ControlNets, hooks) to load."""
import uuid

from comfy import model_management


def convert_cond(cond):
    out = []
    for c in cond:
        temp = c[1].copy()
        model_conds = temp.get("model_conds", {})
        if c[0] is not None:
            temp["cross_attn"] = c[0]
        temp["model_conds"] = model_conds
        temp["uuid"] = uuid.uuid4()
        out.append(temp)
    return out


def prepare_sampling(model, noise_shape, conds, model_options=None):
    model_management.load_models_gpu([model])
    real_model = model.model
    return real_model, conds, []
