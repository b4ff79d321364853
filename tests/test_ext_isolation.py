"""Import isolation: the extension loads inside a process that already has top-level modules named
``core``, ``ui``, ``extension``, ``scripts`` and ``utils`` (other extensions / host code), neither shadowing
them nor being shadowed by them. Each host's loading path runs in a fresh interpreter, with the repository
reached through a folder of another name (as hosts install it) and ``import sailscope`` from site-packages
blocked, so only the by-path registration can make it work.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = os.path.join(os.path.dirname(__file__), "hosts")

PRELUDE = textwrap.dedent(
    """
    import importlib.abc, importlib.util, os, sys
    class BlockInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "sailscope":
                raise ImportError("installed sailscope blocked by the test")
            return None
    sys.meta_path.insert(0, BlockInstalled())
    other = sys.argv[1]
    sys.path.insert(0, other)
    import core, ui, extension, scripts, utils
    theirs = {n: sys.modules[n] for n in ("core", "ui", "extension", "scripts", "utils")}
    ext_dir = sys.argv[2]
    def check():
        for n, m in theirs.items():
            assert sys.modules[n] is m, f"{n} was replaced"
            assert getattr(m, "OWNER", None) == "other", n
        import sailscope.core.score as score
        assert os.path.realpath(score.__file__).startswith(os.path.realpath(sys.argv[3])), score.__file__
        assert sys.modules["sailscope"].__path__ == [ext_dir] or os.path.realpath(sys.modules["sailscope"].__path__[0]) == os.path.realpath(sys.argv[3])
    """
)


def _other_modules(tmp_path):
    other = tmp_path / "other"
    for name in ("core", "ui", "extension", "scripts", "utils"):
        (other / name).mkdir(parents=True)
        (other / name / "__init__.py").write_text("OWNER = 'other'\n")
    ext = tmp_path / "custom_nodes" / "ComfyUI-SAILScope"
    ext.parent.mkdir()
    os.symlink(ROOT, ext)
    return str(other), str(ext)


def _run(code, tmp_path, extra_path=()):
    other, ext = _other_modules(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(extra_path), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code), other, ext, ROOT],
                       cwd=str(tmp_path), capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def test_comfyui_loading_is_isolated(tmp_path):
    out = _run(
        """
        spec = importlib.util.spec_from_file_location("ComfyUI-SAILScope", os.path.join(ext_dir, "__init__.py"),
                                                      submodule_search_locations=[ext_dir])
        m = importlib.util.module_from_spec(spec); sys.modules["ComfyUI-SAILScope"] = m; spec.loader.exec_module(m)
        assert "SailScopeNoise" in m.NODE_CLASS_MAPPINGS
        check()
        import sailscope.extension.common  # the torch-side modules load too
        check()
        print("ok")
        """,
        tmp_path,
    )
    assert out.strip().endswith("ok")


def test_a1111_shim_loading_is_isolated(tmp_path):
    out = _run(
        """
        sys.path.insert(0, os.path.join(sys.argv[4], "a1111"))
        sys.path.insert(0, sys.argv[4])
        from modules import script_callbacks, scripts as a1111_scripts
        old = sys.path
        sys.path = [ext_dir] + sys.path  # A1111 puts the extension folder first while loading its scripts
        try:
            path = os.path.join(ext_dir, "scripts", "sailscope.py")
            spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
            shim = importlib.util.module_from_spec(spec); spec.loader.exec_module(shim)
        finally:
            sys.path = old
        assert issubclass(shim.SailScopeScript, a1111_scripts.Script)
        assert script_callbacks.callback_map["callbacks_cfg_denoised"]
        check()
        print("ok")
        """.replace("sys.argv[4]", repr(HOSTS)),
        tmp_path,
    )
    assert out.strip().endswith("ok")
