"""Stand-in for modules.scripts (A1111 1.10): Script, AlwaysVisible, the hook arg classes, ScriptRunner.

As upstream, ``initialize_scripts(is_img2img)`` instantiates the classes in the module-level ``scripts_data``
(filled by ``load_scripts`` from every ``Script`` subclass in a loaded script module's namespace). Unlike
upstream, the runner does not catch and report exceptions from the hooks: a test must see them.
"""
import re
from collections import namedtuple

AlwaysVisible = object()

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


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

    def post_sample(self, p, ps, *args):
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

    def before_hr(self, p, *args):
        pass


def register_scripts_from_module(module, path="<script>", basedir=""):
    """What load_scripts does with each loaded script module: every Script subclass in its namespace."""
    import inspect

    for script_class in module.__dict__.values():
        if inspect.isclass(script_class) and issubclass(script_class, Script):
            scripts_data.append(ScriptClassData(script_class, path, basedir, module))


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.inputs = [None]
        self.infotext_fields = []
        self.paste_field_names = []

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def setup_ui(self):
        """The always-visible scripts' controls first (inputs[0] is the script dropdown), as upstream."""
        for script in self.alwayson_scripts:
            script.args_from = len(self.inputs)
            script.args_to = len(self.inputs)
            controls = script.ui(script.is_img2img)
            script.controls = controls
            if controls is None:
                continue
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

    def before_hr(self, p):
        for script in self.alwayson_scripts:
            script_args = p.script_args[script.args_from:script.args_to]
            script.before_hr(p, *script_args)

    def post_sample(self, p, ps):
        for script in self.alwayson_scripts:
            script_args = p.script_args[script.args_from:script.args_to]
            script.post_sample(p, ps, *script_args)

    def postprocess_image(self, p, pp):
        for script in self.alwayson_scripts:
            script_args = p.script_args[script.args_from:script.args_to]
            script.postprocess_image(p, pp, *script_args)

    def postprocess(self, p, processed):
        for script in self.alwayson_scripts:
            script_args = p.script_args[script.args_from:script.args_to]
            script.postprocess(p, processed, *script_args)
