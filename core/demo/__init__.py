"""The embedded demo model: procedural data, offline CLIP tokenizer, training and evaluation.

- :mod:`.data`: deterministic caption grammar, images, memorized items, held-out prompts, attribute checker;
- :mod:`.tokenizer`: SD's CLIP tokenizer built from the BPE file in the open-clip-torch wheel;
- :mod:`.train` / :mod:`.cli_train`: ``sailscope train-demo`` (also ``sailscope train-demo``);
- :mod:`.evaluate` / :mod:`.cli_eval`: ``sailscope eval-demo``.
"""
