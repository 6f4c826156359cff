"""The lexicon moved from code to data files (data/lexicon.toml, data/words.toml) and analyze()
split into one function per signal, with no change in what it reads: these messages' signals
and hits were recorded from the implementation before the move (signals_cases.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abi_tui.personas.signals import LEXICONS, analyze

CASES = json.loads((Path(__file__).with_name("signals_cases.json")).read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:30] for c in CASES])
def test_signals_are_unchanged(case):
    sig = analyze(case["text"])
    # Through JSON, as the API shows them (tuples become lists, integer floats stay floats).
    assert json.loads(json.dumps(sig.to_dict())) == case["signals"]
    hits = [[h.category, h.label, round(h.weight, 6), h.start, h.end, h.text, h.negated] for h in sig.hits]
    assert hits == case["hits"]


def test_lexicon_data_loads_every_category():
    categories = {tag.category for lexicon in LEXICONS.values()
                  for tags in lexicon._tags.values() for tag in tags}
    assert categories == {"emotion", "urgency", "learning", "direct", "social", "complaint",
                          "sarcasm", "neutral", "tech", "debugging", "code_noun", "code_verb",
                          "negative_event", "resolution", "policy", "meta"}
    # Debugging phrases carry the tech tag too, tech first (lexicon.toml's `also`).
    tags = LEXICONS["topic"]._tags[("traceback",)]
    assert [t.category for t in tags] == ["tech", "debugging"]
