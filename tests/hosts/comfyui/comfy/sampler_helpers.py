"""Stand-in for comfy.sampler_helpers.convert_cond: CONDITIONING [[tensor, dict]] -> list of cond dicts."""


def convert_cond(cond):
    out = []
    for c in cond:
        temp = c[1].copy()
        temp["cross_attn"] = c[0]
        temp["model_conds"] = {}
        out.append(temp)
    return out
