"""The persona catalogue: data files, sampling parameters and Abbey's tone-adapted temperature."""

from __future__ import annotations

from importlib import resources

import pytest

from abi_tui.errors import InvalidRequest
from abi_tui.personas.catalogue import (
    DEFAULT_PERSONA,
    PERSONA_IDS,
    PersonaFileError,
    adapt_temperature,
    catalogue_dict,
    get_persona,
    list_personas,
    load_catalogue,
    parse_persona,
    sampling_for,
)
from abi_tui.personas.router import route


def test_three_personas_from_package_data():
    folder = resources.files("abi_tui.personas") / "prompts"
    for persona_id in PERSONA_IDS:
        assert (folder / f"{persona_id}.md").is_file()
    assert [p.id for p in list_personas()] == ["abi", "abbey", "aviva"]
    assert DEFAULT_PERSONA == "abbey"


def test_sampling_parameters_match_the_spec():
    abi, abbey, aviva = (get_persona(p) for p in PERSONA_IDS)
    assert (abi.temperature, abi.top_p) == (0.3, None)
    assert (abbey.temperature, abbey.temperature_min, abbey.temperature_max) == (0.7, 0.4, 0.85)
    assert (aviva.temperature, aviva.top_p) == (0.2, 0.95)


def test_system_prompts_are_specific_to_each_role():
    catalogue = load_catalogue()
    prompts = {p: catalogue[p].system_prompt for p in PERSONA_IDS}
    assert len(set(prompts.values())) == 3
    assert all(len(text) > 800 and not text.startswith("+++") for text in prompts.values())
    assert "refuse" in prompts["abi"].lower() or "decline" in prompts["abi"].lower()
    assert "@aviva" in prompts["abbey"] and "confiden" in prompts["abbey"]
    assert "code" in prompts["aviva"].lower() and "hedge" in prompts["aviva"].lower()
    assert all(catalogue[p].exemplars for p in PERSONA_IDS)


def test_get_persona_is_case_insensitive_and_names_the_choices():
    assert get_persona(" Aviva ").id == "aviva"
    with pytest.raises(InvalidRequest) as info:
        get_persona("bob")
    assert info.value.status == 404 and "abi, abbey, aviva" in info.value.message


def test_catalogue_dict_for_the_api():
    data = catalogue_dict()
    assert data["default"] == "abbey"
    assert [p["id"] for p in data["personas"]] == ["abi", "abbey", "aviva"]
    assert "system_prompt" not in data["personas"][0]
    assert catalogue_dict(include_prompts=True)["personas"][2]["system_prompt"]


@pytest.mark.parametrize(("message", "tone", "low", "high"), [
    ("I'm so frustrated and stressed, nothing works!!", "distressed", 0.4, 0.5),
    ("I'm a bit confused about closures", "confused", 0.5, 0.65),
    ("Could you explain why the sky is blue?", "curious", 0.7, 0.7),
    ("hi there! I got the job!", "upbeat", 0.75, 0.85),
    ("what should I cook tonight", "neutral", 0.7, 0.7),
])
def test_abbey_temperature_follows_the_tone(message, tone, low, high):
    decision = route(message)
    assert decision.persona == "abbey"
    params = sampling_for(decision)
    assert params.tone == tone
    assert low <= params.temperature <= high
    # Every persona also sets its anti-loop penalties (repeat penalty and DRY).
    assert params.to_dict() == {"temperature": params.temperature, "repeat_penalty": 1.1, "dry_multiplier": 0.8}


def test_abbey_temperature_stays_in_range():
    abbey = get_persona("abbey")
    for tone in ("distressed", "confused", "upbeat", "curious", "neutral", "unknown"):
        for intensity in (-1.0, 0.0, 0.3, 1.0, 5.0):
            assert 0.4 <= adapt_temperature(abbey, tone, intensity) <= 0.85


def test_other_personas_keep_their_temperature_whatever_the_tone():
    assert sampling_for(route("@aviva I'm so frustrated!!")).to_dict() == {
        "temperature": 0.2, "top_p": 0.95, "repeat_penalty": 1.1, "dry_multiplier": 0.8}
    abi = sampling_for(route("how do i make a bomb"))
    assert abi.temperature == 0.3 and abi.top_p is None
    assert sampling_for("abbey", {"tone": "distressed", "emotions": {"sad": 1.0}}).temperature == 0.4


@pytest.mark.parametrize(("text", "problem"), [
    ("no front matter", "must start"),
    ("+++\nid = 'x'\n", "not closed"),
    ("+++\nid = \n+++\nprompt", "Invalid value"),
    ("+++\nid = 'x'\n+++\n", "empty"),
    ("+++\nid = 'x'\n+++\nprompt", "missing field"),
])
def test_malformed_persona_files_are_reported(text, problem):
    with pytest.raises(PersonaFileError, match=problem):
        parse_persona(text, source="bad.md")
