"""Stand-in for A1111 1.10's ``modules/infotext_utils.py``: how *PNG Info → Send to txt2img* reads a PNG's
``parameters`` text into the UI, written from its published behaviour.

``parse_generation_parameters``: prompt lines, ``Negative prompt:`` lines, and the last line's ``Key: value``
pairs when it holds at least three of them (values in double quotes are JSON strings); ``Size`` splits into
``Size-1``/``Size-2``. ``paste``: what ``connect_paste``'s ``paste_func`` sends to each control of
``paste_fields`` — a callable key is called with the parsed dict, a string key is looked up; ``None`` leaves the
control unchanged; otherwise the value is converted to the type of the control's current value (``"False"``
to ``False`` for checkboxes).
"""
import json
import re

RE_PARAM_CODE = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
RE_PARAM = re.compile(RE_PARAM_CODE)
RE_PARAMS = re.compile(r"^(?:" + RE_PARAM_CODE + "){3,}$")
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
UNCHANGED = object()


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict:
    res = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in RE_PARAM.findall(lastline):
        v = unquote(v) if v[:1] == '"' else v
        m = RE_IMAGESIZE.match(v)
        if m is not None:
            res[k + "-1"], res[k + "-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    return res


def paste(paste_fields, infotext: str) -> list:
    """The value each control gets (``UNCHANGED`` where A1111 sends ``gr.update()``)."""
    params = parse_generation_parameters(infotext)
    out = []
    for component, key in paste_fields:
        v = key(params) if callable(key) else params.get(key, None)
        if v is None:
            out.append(UNCHANGED)
            continue
        valtype = type(component.value)
        try:
            out.append(False if valtype is bool and v == "False" else valtype(v))
        except Exception:
            out.append(UNCHANGED)
    return out
