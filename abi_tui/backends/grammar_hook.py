"""A GBNF grammar on a request's sampling, for the local llama.cpp backend.

`SamplingParams` knows only `json_mode` (llama-cpp-python's generic JSON grammar). Ollama's
`format` may be a JSON schema, which needs the grammar converted from that schema. This module
adds it without changing the backend: `GrammarParams` carries the grammar text, and `install()`
wraps `LlamaBackend._build_sampler` so that such a request's sampler chain starts with the
grammar sampler, exactly where `json_mode` puts its own (the grammar must see every candidate
before top-k, top-p and the rest narrow them).

When `SamplingParams` gets a grammar field of its own, this module and its one call site in
`server/routes_ollama.py` go away.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from abi_tui.backends.base import SamplingParams
from abi_tui.errors import InvalidRequest

# JSON-schema keywords llama-cpp-python's converter passes over without constraining anything:
# a schema using one could be answered with JSON that breaks it, so it is refused instead.
IGNORED_KEYWORDS = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems", "not",
    "if", "then", "else", "patternProperties", "propertyNames", "minProperties", "maxProperties",
    "contains", "minContains", "maxContains", "dependentRequired", "dependentSchemas",
    "unevaluatedProperties", "unevaluatedItems",
})
# Where subschemas sit: one schema, a list of them, or a name -> schema table.
_ONE = ("items", "additionalProperties", "additionalItems")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_TABLE = ("properties", "$defs", "definitions")


@dataclass
class GrammarParams(SamplingParams):
    grammar: str | None = None  # GBNF text; root rule "root"


def schema_grammar(schema: dict[str, Any], param: str = "format") -> str:
    """GBNF for a JSON schema (llama-cpp-python's converter: what llama.cpp's server uses).
    A schema the converter cannot take is a 400 naming `param`."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    unsupported = _ignored_keyword(schema, "")
    if unsupported is not None:
        keyword, where = unsupported
        raise InvalidRequest(f"'{param}': the JSON-schema keyword '{keyword}' (at {where or 'the top'}) is "
                             "not supported by abi's grammar converter; leave it out", param=param)
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError, NotImplementedError) as exc:
        raise InvalidRequest(f"'{param}': this JSON schema cannot be turned into a grammar: {exc}",
                             param=param) from None


def _ignored_keyword(schema: Any, where: str) -> tuple[str, str] | None:
    """The first keyword the converter would ignore, and where it is."""
    if not isinstance(schema, dict):
        return None
    for keyword in schema:
        if keyword in IGNORED_KEYWORDS:
            return keyword, where
    children: list[tuple[Any, str]] = []
    for key in _ONE:
        if isinstance(schema.get(key), dict):
            children.append((schema[key], f"{where}.{key}".lstrip(".")))
    for key in _LIST:
        if isinstance(schema.get(key), list):
            children += [(s, f"{where}.{key}[{i}]".lstrip(".")) for i, s in enumerate(schema[key])]
    for key in _TABLE:
        if isinstance(schema.get(key), dict):
            children += [(s, f"{where}.{key}.{name}".lstrip(".")) for name, s in schema[key].items()]
    for child, path in children:
        found = _ignored_keyword(child, path)
        if found is not None:
            return found
    return None


def install() -> None:
    """Wrap `LlamaBackend._build_sampler` once per process (idempotent)."""
    import llama_cpp as L

    from abi_tui.backends.llamacpp import LlamaBackend

    original = LlamaBackend._build_sampler
    if getattr(original, "grammar_hook", False):
        return

    def build_sampler(self: LlamaBackend, params: SamplingParams) -> Any:
        grammar = getattr(params, "grammar", None)
        chain = original(self, params)
        if not grammar:
            return chain
        sampler = L.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            L.llama_sampler_free(chain)
            raise ValueError("llama.cpp refused the grammar")
        # A chain can only append: build a new one with the grammar first, then move the
        # samplers over in order (a removed sampler is owned by the caller until added again).
        ordered = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        L.llama_sampler_chain_add(ordered, sampler)
        while L.llama_sampler_chain_n(chain) > 0:
            L.llama_sampler_chain_add(ordered, L.llama_sampler_chain_remove(chain, 0))
        L.llama_sampler_free(chain)
        return ordered

    build_sampler.grammar_hook = True  # type: ignore[attr-defined]
    LlamaBackend._build_sampler = build_sampler  # type: ignore[method-assign]
