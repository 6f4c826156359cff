"""JSON schemas to llama.cpp grammars (GBNF), so that every answer validates against its schema.

llama-cpp-python's converter (`llama_cpp.llama_grammar.SchemaConverter`, a port of llama.cpp's
json-schema-to-grammar) does the work. Two gaps are closed here: it ignores number bounds
(`minimum`, `maximum`, exclusive ones), which become digit-range rules, and its string
characters admit raw control characters, which JSON forbids. Keywords the grammar cannot
enforce (`multipleOf`, `uniqueItems`, `not`, `oneOf`, ...) are refused with a 400 naming them
rather than producing answers that fail validation.
"""

from __future__ import annotations

import json
import math
from typing import Any

from llama_cpp.llama_grammar import (
    RESERVED_NAMES,
    STRING_FORMAT_RULES,
    BuiltinRule,
    SchemaConverter,
)

from abi_tui.backends.tool_calls import ToolFormat
from abi_tui.errors import InvalidRequest

# Keywords whose constraint a grammar cannot express (or the converter ignores).
UNSUPPORTED = ("multipleOf", "uniqueItems", "not", "if", "then", "else", "oneOf", "allOf", "patternProperties",
               "dependentRequired", "dependentSchemas", "minProperties", "maxProperties", "contains",
               "minContains", "maxContains", "propertyNames", "unevaluatedProperties", "unevaluatedItems",
               "$dynamicRef", "contentEncoding")
FORMATS = {"uuid", *(name.removesuffix("-string") for name in STRING_FORMAT_RULES)}
# JSON text forbids raw control characters in strings; the converter's `char` admits them.
JSON_CHAR = BuiltinRule(r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', [])
MAX_CALLS = 4  # calls in one answer when parallel calls are allowed
FRACTION = '"." [0-9]{1,8}'  # bounded, so a model cannot run away in digits
# Schemas nested in these keys are visited by the check below.
SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
SUBSCHEMA_LISTS = ("anyOf", "prefixItems")


class UnsupportedSchema(InvalidRequest):
    pass


def check_schema(schema: Any, where: str) -> None:
    """Refuse what the grammar would not enforce; `where` names the schema in the request."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"'{where}' must be a JSON schema object", param=where)
    for key in UNSUPPORTED:
        if key in schema:
            raise UnsupportedSchema(f"'{where}': the JSON schema keyword '{key}' is not supported for "
                                    "constrained generation", param=where)
    fmt = schema.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise UnsupportedSchema(f"'{where}': string format {fmt!r} is not supported (supported: "
                                f"{', '.join(sorted(FORMATS))})", param=where)
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        raise UnsupportedSchema(f"'{where}': only local references ('#/...') are supported", param=where)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        missing = [name for name in schema.get("required", []) if name not in properties]
        if missing:
            raise UnsupportedSchema(f"'{where}': required properties {missing} are not in 'properties'",
                                    param=where)
    for key in SUBSCHEMA_MAPS:
        for sub in (schema.get(key) or {}).values():
            check_schema(sub, where)
    for key in SUBSCHEMA_LISTS:
        for sub in schema.get(key) or []:
            check_schema(sub, where)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            check_schema(schema[key], where)
    if isinstance(schema.get("items"), list):
        for sub in schema["items"]:
            check_schema(sub, where)


class _Converter(SchemaConverter):
    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        return super()._add_primitive(name, JSON_CHAR if name == "char" else rule)

    def visit(self, schema: dict, name: str) -> str:
        kind = schema.get("type")
        if isinstance(kind, list) and not any(k in schema for k in ("$ref", "anyOf", "const", "enum")):
            # The converter keeps only the type of each alternative; keep their constraints too.
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            return self._add_rule(rule_name, self._generate_union_rule(name, [{**schema, "type": t} for t in kind]))
        bounded = any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))
        if kind in ("integer", "number") and bounded and not any(k in schema for k in ("enum", "const")):
            rule = bounded_number(schema, integer=kind == "integer")
            return self._add_rule(name + "-" if name in RESERVED_NAMES else name or "root", rule + " space")
        return super().visit(schema, name)


def schema_grammar(schema: dict[str, Any], where: str) -> str:
    """The GBNF text whose sentences are exactly JSON texts valid under `schema` (as far as the
    supported keywords go: the rest is refused)."""
    check_schema(schema, where)
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "request")
        converter.visit(resolved, "")
        return converter.format_grammar()
    except UnsupportedSchema:
        raise
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UnsupportedSchema(f"'{where}' cannot be turned into a grammar: {exc}", param=where) from None


def tool_call_grammar(schemas: dict[str, dict[str, Any]], where: str, fmt: ToolFormat, many: bool) -> str:
    """A grammar for an answer made only of tool calls in `fmt`: `{"name": ..., "arguments":
    {...}}` objects whose arguments validate against their function's schema (one call, or up
    to MAX_CALLS when `many`)."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    alternatives = []
    try:
        for i, (name, schema) in enumerate(schemas.items()):
            check_schema(schema, where)
            resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "request")
            arguments = converter.visit(resolved, f"args{i}")
            head = json.dumps({"name": name})[:-1] + f', "{fmt.args_key}": '
            alternatives.append(converter._add_rule(f"call{i}", f'{_literal(head)} {arguments} "}}"'))
    except UnsupportedSchema:
        raise
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UnsupportedSchema(f"'{where}' cannot be turned into a grammar: {exc}", param=where) from None
    call = converter._add_rule("call", " | ".join(alternatives))
    one = converter._add_rule("one-call", f"{_literal(fmt.open)} {call} {_literal(fmt.close)}")
    more = f' ({_literal(fmt.separator)} {one}){{0,{MAX_CALLS - 1}}}' if many else ""
    converter._rules["root"] = f"{_literal(fmt.list_open)} {one}{more} {_literal(fmt.list_close)}"
    return converter.format_grammar()


def _literal(text: str) -> str:
    return json.dumps(text) if text else ""  # a GBNF string literal is a JSON string


# ----------------------------------------------------------------------------- number bounds
def bounded_number(schema: dict[str, Any], *, integer: bool) -> str:
    """A GBNF expression for the numbers within the schema's bounds (integers, or decimals
    written with a fraction of up to 8 digits). Conservative at fractional bounds: 0.5 <= x
    admits 1, 2, ... and 1.25, never 0.75."""
    lo = _bound(schema, "minimum", "exclusiveMinimum", low=True)
    hi = _bound(schema, "maximum", "exclusiveMaximum", low=False)
    first = None if lo is None else _first_int(lo)
    last = None if hi is None else _last_int(hi)
    if first is not None and last is not None and first > last:
        raise ValueError(f"no whole number lies within the bounds {schema}; widen them")
    parts = [_signed_range(first, last)]
    if not integer:
        # k.xxx lies in [k, k+1) for k >= 0, and -k.xxx in (-k-1, -k]: both ends must be in bounds.
        top = None if hi is None else math.floor(hi[0]) - 1
        nonneg_lo = max(first if first is not None else 0, 0)
        if top is None or nonneg_lo <= min(top, last if last is not None else top):
            parts.append(f"{_range(nonneg_lo, None if top is None else min(top, last if last is not None else top))}"
                         f" {FRACTION}")
        bottom = None if lo is None else math.ceil(lo[0]) + 1
        neg_hi = min(last if last is not None else -1, -1)
        neg_lo = None if bottom is None else max(bottom, first if first is not None else bottom)
        if neg_lo is None or neg_lo <= neg_hi:
            parts.append(f'"-" {_range(-neg_hi, None if neg_lo is None else -neg_lo)} {FRACTION}')
    return "(" + " | ".join(f"({p})" for p in parts if p) + ")"


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, *, low: bool) -> tuple[float, bool] | None:
    """(value, exclusive) of the tighter bound given, or None."""
    found = []
    for key, excl in ((inclusive, False), (exclusive, True)):
        value = schema.get(key)
        if isinstance(value, bool):  # draft 4's boolean exclusiveMinimum
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            found.append((float(value), excl))
    if not found:
        return None
    return (max if low else min)(found, key=lambda b: (b[0], b[1] if low else not b[1]))


def _first_int(bound: tuple[float, bool]) -> int:
    value, exclusive = bound
    first = math.ceil(value)
    return first + 1 if exclusive and first == value else first


def _last_int(bound: tuple[float, bool]) -> int:
    value, exclusive = bound
    last = math.floor(value)
    return last - 1 if exclusive and last == value else last


def _signed_range(first: int | None, last: int | None) -> str:
    parts = []
    if first is None or first < 0:  # negatives: "-" then 1..
        top = None if first is None else -first
        bottom = 1 if last is None or last >= 0 else -last
        if top is None or bottom <= top:
            parts.append(f'"-" {_range(bottom, top)}')
    if last is None or last >= 0:
        parts.append(_range(max(first or 0, 0) if first is not None else 0, last))
    return " | ".join(f"({p})" for p in parts)


def _range(lo: int, hi: int | None) -> str:
    """GBNF for the decimal integers lo..hi (hi None: unbounded), lo >= 0, no leading zeros."""
    if hi is None:
        width = len(str(lo))
        upper = 10 ** width - 1
        return f"({_range(lo, upper)}) | [1-9] [0-9]{{{width},{width + 15}}}"
    alternatives = []
    while lo <= hi:
        width_end = 10 ** len(str(lo)) - 1
        end = min(hi, width_end)
        alternatives.extend(_same_width(str(lo), str(end)))
        lo = end + 1
    return " | ".join(f"({a})" for a in alternatives)


def _same_width(lo: str, hi: str) -> list[str]:
    """Digit-wise alternatives for lo..hi, both of the same width."""
    if not lo:
        return [""]
    if lo == hi:
        return [f'"{lo}"']
    if lo[0] == hi[0]:
        return [f'"{lo[0]}" {rest}'.strip() for rest in _same_width(lo[1:], hi[1:])]
    rest = len(lo) - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return [f"[{lo[0]}-{hi[0]}]" + (f" [0-9]{{{rest}}}" if rest else "")]
    out = [f'"{lo[0]}" {tail}'.strip() for tail in _same_width(lo[1:], "9" * rest)]
    if int(hi[0]) - int(lo[0]) > 1:
        out.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + (f" [0-9]{{{rest}}}" if rest else ""))
    out.extend(f'"{hi[0]}" {tail}'.strip() for tail in _same_width("0" * rest, hi[1:]))
    return out
