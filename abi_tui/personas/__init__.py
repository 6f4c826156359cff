"""Personas: the catalogue (Abi, Abbey, Aviva), the router that picks one, and their metrics."""

from abi_tui.personas.catalogue import (
    DEFAULT_PERSONA,
    PERSONA_IDS,
    Persona,
    SamplingParams,
    catalogue_dict,
    get_persona,
    list_personas,
    sampling_for,
)
from abi_tui.personas.metrics import PersonaMetrics
from abi_tui.personas.router import PersonaRouter, RoutingDecision, split_override

__all__ = [
    "DEFAULT_PERSONA",
    "PERSONA_IDS",
    "Persona",
    "PersonaMetrics",
    "PersonaRouter",
    "RoutingDecision",
    "SamplingParams",
    "catalogue_dict",
    "get_persona",
    "list_personas",
    "sampling_for",
    "split_override",
]
