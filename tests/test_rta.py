"""Random Token Addition baseline: deterministic prompt edits that keep the original words in order."""
from __future__ import annotations

import pytest

from sailscope.core.errors import UserInputError
from sailscope.core.mitigation.rta import RtaSettings, add_random_tokens, iter_rta

WORDS = ("apple", "boat", "cloud", "drum", "eagle")


def test_tokens_are_inserted_deterministically_keeping_the_prompt_order():
    prompt = "a large blue circle above three red triangles"
    p1, added = add_random_tokens(prompt, WORDS, RtaSettings(tokens=3), seed=7)
    p2, _ = add_random_tokens(prompt, WORDS, RtaSettings(tokens=3), seed=7)
    p3, _ = add_random_tokens(prompt, WORDS, RtaSettings(tokens=3), seed=8)
    assert p1 == p2 and p1 != p3
    assert len(added) == 3 and all(w in WORDS for w in added)
    words = p1.split()
    assert len(words) == len(prompt.split()) + 3
    rest = list(words)
    for w in added:
        rest.remove(w)
    assert rest == prompt.split()  # the original words survive, in order


def test_number_variant_and_salt():
    p, added = add_random_tokens("a cat", (), RtaSettings(tokens=2, kind="number"), seed=0)
    assert all(a.isdigit() and 0 <= int(a) < 10**6 for a in added)
    q, _ = add_random_tokens("a cat", (), RtaSettings(tokens=2, kind="number", salt=1), seed=0)
    assert p != q


@pytest.mark.parametrize("kw,word", [({"tokens": 0}, "tokens"), ({"kind": "word"}, "kind"), ({"salt": -1}, "salt")])
def test_validation_names_the_argument(kw, word):
    with pytest.raises(UserInputError, match=word):
        RtaSettings(**kw)


def test_iter_rta_uses_the_tokenizer_vocabulary(tiny_pipe):
    from sailscope.core.sampling import GenerationSettings

    gs = GenerationSettings(prompt="a red circle", seed=1)
    (res,) = list(iter_rta(tiny_pipe, gs, RtaSettings(tokens=4)))
    assert res.settings.prompt == res.prompt and res.settings.seed == 1 and res.original_prompt == "a red circle"
    vocab = tiny_pipe.tokenizer.get_vocab()
    assert all(w + "</w>" in vocab for w in res.added)
    assert res.report()["added"] == res.added
