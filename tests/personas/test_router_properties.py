"""Property tests: the router never raises and always returns a well-formed decision."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abi_tui.personas.catalogue import sampling_for
from abi_tui.personas.classifier import POLICY_RULES
from abi_tui.personas.router import PersonaRouter, split_override
from abi_tui.personas.signals import LEXICONS

ROUTER = PersonaRouter()
PERSONAS = st.sampled_from([None, "abi", "abbey", "aviva", "auto", "AVIVA"])
# Words the lexicons know, so generated messages hit real signals, phrases and policies.
VOCABULARY = sorted({w for lex in LEXICONS.values() for phrase in lex._tags for w in phrase
                     if w not in ("*", "...")})
WORDY = st.lists(
    st.one_of(st.sampled_from(VOCABULARY), st.sampled_from(["@aviva", "@abi", "!!!", "?", ",",
                                                           "not", "```", "rm -rf /", "\n"])),
    max_size=40,
).map(" ".join)


def check(content: str, previous: str | None) -> None:
    decision, cleaned = ROUTER.route_message(content, previous=previous)
    assert decision.persona in ("abi", "abbey", "aviva")
    assert decision.policy is None or decision.policy in POLICY_RULES
    if decision.policy is not None:
        assert decision.persona == ("abbey" if decision.policy == "self_harm" else "abi")
    if decision.policy is not None and split_override(cleaned)[0] is None:
        # No override, prefix or history routes around a violation.
        for persona in ("abi", "abbey", "aviva"):
            forced = ROUTER.route(cleaned, override=persona, previous=persona)
            assert (forced.persona, forced.policy) == (decision.persona, decision.policy)
    assert 0.0 <= decision.confidence <= 1.0
    assert decision.reason.endswith(".") and "\n" not in decision.reason
    assert content.endswith(cleaned)
    assert json.loads(json.dumps(decision.to_dict()))["policy"] == decision.policy
    params = sampling_for(decision)
    assert 0.2 <= params.temperature <= 0.85


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400), PERSONAS)
def test_router_never_raises_on_arbitrary_text(content, previous):
    check(content, previous)


@settings(max_examples=300, deadline=None)
@given(WORDY, PERSONAS)
def test_router_never_raises_on_lexicon_soup(content, previous):
    check(content, previous)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=2000))
def test_routing_is_deterministic(content):
    a, b = ROUTER.route(content), ROUTER.route(content)
    assert a.to_dict() == b.to_dict()
