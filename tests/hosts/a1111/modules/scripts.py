"""Stand-in for modules.scripts (A1111 1.10): Script, AlwaysVisible, the hook arg classes, ScriptRunner."""
import re

AlwaysVisible = object()


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def process(self, p, *args):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


class ScriptRunner:
    def __init__(self):
        self.alwayson_scripts = []
        self.inputs = [None]
        self.infotext_fields = []
        self.paste_field_names = []

    def initialize_scripts(self, script_classes, is_img2img):
        for cls in script_classes:
            script = cls()
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            if script.show(script.is_img2img) == AlwaysVisible:
                script.alwayson = True
                self.alwayson_scripts.append(script)

    def setup_ui(self):
        for script in self.alwayson_scripts:
            script.args_from = len(self.inputs)
            controls = script.ui(script.is_img2img)
            script.controls = controls
            script.name = script.title().lower()
            if script.infotext_fields is not None:
                self.infotext_fields += script.infotext_fields
            if script.paste_field_names is not None:
                self.paste_field_names += script.paste_field_names
            self.inputs += controls
            script.args_to = len(self.inputs)
        return self.inputs

    def process(self, p):
        for script in self.alwayson_scripts:
            script_args = p.script_args[script.args_from:script.args_to]
            script.process(p, *script_args)

    def process_before_every_sampling(self, p, **kwargs):
        for script in self.alwayson_scripts:
            script_args = p.script_args[script.args_from:script.args_to]
            script.process_before_every_sampling(p, *script_args, **kwargs)

    def postprocess_image(self, p, pp):
        for script in self.alwayson_scripts:
            script_args = p.script_args[script.args_from:script.args_to]
            script.postprocess_image(p, pp, *script_args)

    def postprocess(self, p, processed):
        for script in self.alwayson_scripts:
            script_args = p.script_args[script.args_from:script.args_to]
            script.postprocess(p, processed, *script_args)
