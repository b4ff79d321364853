"""One tiny pipeline per test process (shared by the extension test modules; building it is the slow part)."""
from functools import lru_cache


@lru_cache(maxsize=1)
def tiny():
    import torch

    from sailscope.core.score import DiffusersScoreModel
    from sailscope.core.testing import tiny_pipeline

    torch.set_num_threads(1)
    pipe = tiny_pipeline()
    return pipe, DiffusersScoreModel.from_pipeline(pipe)
