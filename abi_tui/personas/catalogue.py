"""The persona catalogue: Abi, Abbey and Aviva.

Each persona is one data file in `prompts/`: TOML front matter between `+++` lines (name, role,
sampling, badge colour, exemplar messages for embedding similarity, the transcript a base model
continues) and the system prompt as the Markdown body. Keeping the numbers next to the prompt
means one file says everything about a persona.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Protocol

from abi_tui.errors import InvalidRequest

PERSONA_IDS: tuple[str, ...] = ("abi", "abbey", "aviva")
DEFAULT_PERSONA = "abbey"
DISPLAY_NAMES = {"abi": "Abi", "abbey": "Abbey", "aviva": "Aviva"}
# Model ids that mean "pick a persona" rather than a model.
AUTO = "auto"


@dataclass(frozen=True)
class Persona:
    id: str
    name: str
    role: str
    description: str
    temperature: float
    system_prompt: str
    top_p: float | None = None
    # Abbey's temperature moves inside this range with the user's tone.
    temperature_min: float | None = None
    temperature_max: float | None = None
    color: str = "#c0caf5"
    exemplars: tuple[str, ...] = field(default_factory=tuple)
    # Against loops: llama.cpp's repeat penalty (1 = off) and DRY multiplier (0 = off).
    repeat_penalty: float = 1.0
    dry_multiplier: float = 0.0
    # For a base model (no chat template): one line introducing the persona, and example turns
    # (user, answer) that show its voice; the model continues the transcript.
    transcript: str = ""
    examples: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def to_dict(self, *, include_prompt: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["exemplars"] = list(self.exemplars)
        data["examples"] = [{"user": u, "assistant": a} for u, a in self.examples]
        if not include_prompt:
            data.pop("system_prompt")
        return data


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float | None = None
    tone: str = "neutral"
    repeat_penalty: float = 1.0
    dry_multiplier: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Only the keys a backend should send: those the persona leaves at their neutral value
        are left out."""
        out: dict[str, Any] = {"temperature": self.temperature}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.repeat_penalty != 1.0:
            out["repeat_penalty"] = self.repeat_penalty
        if self.dry_multiplier:
            out["dry_multiplier"] = self.dry_multiplier
        return out


class PersonaFileError(Exception):
    """A persona data file is malformed: a packaging bug, not something a user causes."""


def parse_persona(text: str, *, source: str = "<persona>") -> Persona:
    """Parse one persona file: `+++` TOML front matter, then the system prompt."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "+++":
        raise PersonaFileError(f"{source}: must start with a +++ front matter line")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "+++")
    except StopIteration:
        raise PersonaFileError(f"{source}: front matter is not closed with +++") from None
    try:
        meta = tomllib.loads("\n".join(lines[1:end]))
    except tomllib.TOMLDecodeError as exc:
        raise PersonaFileError(f"{source}: {exc}") from None
    prompt = "\n".join(lines[end + 1:]).strip()
    if not prompt:
        raise PersonaFileError(f"{source}: the system prompt is empty")
    try:
        return Persona(
            id=str(meta["id"]),
            name=str(meta["name"]),
            role=str(meta["role"]),
            description=str(meta["description"]),
            temperature=float(meta["temperature"]),
            system_prompt=prompt,
            top_p=float(meta["top_p"]) if "top_p" in meta else None,
            temperature_min=float(meta["temperature_min"]) if "temperature_min" in meta else None,
            temperature_max=float(meta["temperature_max"]) if "temperature_max" in meta else None,
            color=str(meta.get("color", "#c0caf5")),
            exemplars=tuple(str(x) for x in meta.get("exemplars", ())),
            repeat_penalty=float(meta.get("repeat_penalty", 1.0)),
            dry_multiplier=float(meta.get("dry_multiplier", 0.0)),
            transcript=str(meta.get("transcript", "")).strip(),
            examples=tuple((str(e["user"]), str(e["assistant"])) for e in meta.get("examples", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PersonaFileError(f"{source}: bad or missing field {exc}") from None


@cache
def load_catalogue() -> dict[str, Persona]:
    """All personas by id, read once from the package data."""
    folder = resources.files("abi_tui.personas") / "prompts"
    catalogue: dict[str, Persona] = {}
    for persona_id in PERSONA_IDS:
        source = folder / f"{persona_id}.md"
        persona = parse_persona(source.read_text(encoding="utf-8"), source=str(source))
        if persona.id != persona_id:
            raise PersonaFileError(f"{source}: id {persona.id!r} does not match the file name")
        catalogue[persona_id] = persona
    return catalogue


def list_personas() -> list[Persona]:
    return list(load_catalogue().values())


def get_persona(persona_id: str) -> Persona:
    """The persona with this id (case-insensitive); InvalidRequest (400) names the choices."""
    persona = load_catalogue().get(persona_id.strip().lower())
    if persona is None:
        raise InvalidRequest(
            f"unknown persona {persona_id!r} (choose one of {', '.join(PERSONA_IDS)})",
            param="persona", code="persona_not_found", status=404,
        )
    return persona


def catalogue_dict(*, include_prompts: bool = False) -> dict[str, Any]:
    """The body of GET /api/v1/personas."""
    return {
        "default": DEFAULT_PERSONA,
        "personas": [p.to_dict(include_prompt=include_prompts) for p in list_personas()],
    }


class _Decision(Protocol):
    persona: str
    signals: dict[str, Any]


def adapt_temperature(persona: Persona, tone: str, intensity: float = 0.5) -> float:
    """Abbey's temperature by tone: calmer and more precise for distress, livelier for small talk.

    distressed: 0.7 -> 0.4 as intensity rises (a steady, predictable answer); confused: a little
    below the base (clear over creative); upbeat: up to 0.85; curious and neutral: the base.
    Personas without a range keep their fixed temperature.
    """
    lo, hi = persona.temperature_min, persona.temperature_max
    if lo is None or hi is None:
        return persona.temperature
    base = persona.temperature
    intensity = min(1.0, max(0.0, intensity))
    if tone == "distressed":
        value = base - (base - lo) * intensity
    elif tone == "confused":
        value = base - 0.5 * (base - lo) * intensity
    elif tone == "upbeat":
        value = base + (hi - base) * max(intensity, 0.5)
    else:
        value = base
    return round(min(hi, max(lo, value)), 3)


def sampling_for(decision: _Decision | str, signals: dict[str, Any] | None = None) -> SamplingParams:
    """Sampling parameters for a routing decision (or a persona id plus optional signals).

    Request parameters the user sets explicitly should win over these; this is the default.
    """
    if isinstance(decision, str):
        persona_id, sig = decision, signals or {}
    else:
        persona_id, sig = decision.persona, signals if signals is not None else decision.signals
    persona = get_persona(persona_id)
    tone = str(sig.get("tone", "neutral"))
    emotions = sig.get("emotions") or {}
    if tone in ("distressed", "confused"):
        intensity = max((v for k, v in emotions.items() if k not in ("happy", "excited", "curious")),
                        default=0.5)
    elif tone == "upbeat":
        intensity = max(emotions.get("happy", 0.0), emotions.get("excited", 0.0), 0.5)
    else:
        intensity = 0.5
    return SamplingParams(
        temperature=adapt_temperature(persona, tone, float(intensity)),
        top_p=persona.top_p,
        tone=tone,
        repeat_penalty=persona.repeat_penalty,
        dry_multiplier=persona.dry_multiplier,
    )
