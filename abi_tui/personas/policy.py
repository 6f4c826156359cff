"""Abi's answers to policy violations, read from `data/refusals.toml`.

The server answers a flagged message itself (moderation a small model cannot talk its way out
of): every rule has a name, the reason it is refused and a safe alternative. Self-harm is the
exception: it is never refused; a supportive message with crisis lines goes first and Abbey
continues.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

SELF_HARM = "self_harm"


@dataclass(frozen=True)
class PolicyRule:
    id: str
    name: str
    reason: str = ""
    alternative: str = ""
    support: str = ""


@cache
def _load() -> tuple[str, dict[str, PolicyRule]]:
    data = tomllib.loads((resources.files("abi_tui.personas") / "data" / "refusals.toml").read_text("utf-8"))
    rules = {rule_id: PolicyRule(id=rule_id, **fields) for rule_id, fields in data["rules"].items()}
    return data["refusal"], rules


def rules() -> dict[str, PolicyRule]:
    return _load()[1]


def rule(rule_id: str) -> PolicyRule:
    """The rule by id; an id the data does not know still gets a refusal, named by its id."""
    return rules().get(rule_id) or PolicyRule(rule_id, rule_id.replace("_", " "),
                                              "it is against the rules I follow", "")


def refusal_text(rule_id: str) -> str:
    template, _ = _load()
    found = rule(rule_id)
    return template.format(name=found.name, reason=found.reason, alternative=found.alternative).strip()


def support_text() -> str:
    return rule(SELF_HARM).support
