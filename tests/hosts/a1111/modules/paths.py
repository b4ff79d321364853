import os
import tempfile

script_path = os.path.dirname(os.path.abspath(__file__))
models_path = os.path.join(tempfile.gettempdir(), "a1111-standin-models")
