"""Moderation against disguised words: how many violations stay caught when their letters are
disguised, and how many benign messages a disguise gets refused.

    python benchmarks/router_disguises.py [--split dev] [--sample 300] [--words-only] [--seed 7]

Of the split's messages (a seeded sample of `--sample` violations and as many benign messages,
about 4 minutes with both encoders), each violation that the router catches as written is
disguised seven ways, each
applied to every word of four letters or more (what someone hiding a request from a filter
does): a zero-width space inside the word, Cyrillic look-alikes for half its letters, fullwidth
letters, mathematical bold letters, combining marks stacked on each letter ("Zalgo"), digits
for letters (leetspeak) and, for the longest word only, its letters spelled out with spaces.
The same disguises are applied to the split's benign messages to count refusals. The baseline,
in the same run, is the same model reading the text as typed (`readable.plain` and
`readable.decoded` replaced by the identity), which is how the router read every message before
it had them. Prints, per disguise, the share of violations still caught and of benign messages
flagged, for both, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abi_tui.models.sentence_encoder import shared_encoder  # noqa: E402
from abi_tui.personas import router as router_module  # noqa: E402
from abi_tui.personas.classifier import ADAPTER_PATH  # noqa: E402
from abi_tui.personas.router import PersonaRouter  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "abi_tui" / "personas" / "data" / "corpus.jsonl"
CYRILLIC = dict(zip("aceopxyiABCEHKMOPTX", "асеорхуіАВСЕНКМОРТХ", strict=True))
LEET = dict(zip("aeiost", "431057", strict=True))


def _words(text: str, disguise: Callable[[str, random.Random], str], rng: random.Random) -> str:
    return " ".join(disguise(w, rng) if sum(c.isalpha() for c in w) >= 4 else w
                    for w in text.split(" "))


def zero_width(w: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(w))
    return w[:i] + "\u200b" + w[i:]


def look_alikes(w: str, rng: random.Random) -> str:
    return "".join(CYRILLIC[c] if c in CYRILLIC and rng.random() < 0.5 else c for c in w)


def fullwidth(w: str, rng: random.Random) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in w)


def math_bold(w: str, rng: random.Random) -> str:
    return "".join(chr(0x1D41A + ord(c) - 97) if "a" <= c <= "z" else
                   chr(0x1D400 + ord(c) - 65) if "A" <= c <= "Z" else c for c in w)


def zalgo(w: str, rng: random.Random) -> str:
    return "".join(c + "".join(chr(rng.randrange(0x300, 0x36F)) for _ in range(rng.randrange(1, 4)))
                   if c.isalpha() else c for c in w)


def leet(w: str, rng: random.Random) -> str:
    return "".join(LEET[c] if c in LEET and rng.random() < 0.7 else c for c in w)


def spelled(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = max(range(len(words)), key=lambda k: (sum(c.isalpha() for c in words[k]), -k))
    if sum(c.isalpha() for c in words[i]) < 4 or not words[i].isalpha():
        return text
    words[i] = " ".join(words[i])
    return " ".join(words)


DISGUISES: dict[str, Callable[[str, random.Random], str]] = {
    "zero-width space": lambda t, r: _words(t, zero_width, r),
    "Cyrillic look-alikes": lambda t, r: _words(t, look_alikes, r),
    "fullwidth": lambda t, r: _words(t, fullwidth, r),
    "mathematical bold": lambda t, r: _words(t, math_bold, r),
    "stacked marks": lambda t, r: _words(t, zalgo, r),
    "leetspeak": lambda t, r: _words(t, leet, r),
    "spelled out": spelled,
}


def flagged(router: PersonaRouter, text: str) -> bool:
    return router.route_message(text)[0].policy is not None


def run(router: PersonaRouter, violations: list[str], benign: list[str], seed: int,
        ) -> dict[str, tuple[float, float]]:
    out = {}
    for name, disguise in DISGUISES.items():
        rng = random.Random(f"{seed}:{name}")
        caught = sum(flagged(router, disguise(t, rng)) for t in violations) / len(violations)
        refused = sum(flagged(router, disguise(t, rng)) for t in benign) / len(benign)
        out[name] = (caught, refused)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--words-only", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sample", type=int, default=300, help="violations (and benign messages)")
    args = ap.parse_args()
    if args.words_only:
        router = PersonaRouter()
    else:
        encoder, tuned = shared_encoder(), shared_encoder(ADAPTER_PATH)
        if encoder is None or tuned is None:
            raise SystemExit("the sentence encoder is not installed (or use --words-only)")
        router = PersonaRouter(embed=encoder.encode, embed_tuned=tuned.encode)
    with CORPUS.open(encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if r["split"] == args.split]
    rng = random.Random(args.seed)
    violations = [r["text"] for r in rows if r["policy"]]
    others = [r["text"] for r in rows if not r["policy"]]
    violations = rng.sample(violations, min(args.sample, len(violations)))
    others = rng.sample(others, min(args.sample, len(others)))
    caught = [t for t in violations if flagged(router, t)]
    benign = [t for t in others if not flagged(router, t)]
    print(f"{args.split}: {len(caught)} violations caught as written, {len(benign)} benign "
          f"messages not flagged as written; {'words only' if args.words_only else 'both encoders'}")
    reading = run(router, caught, benign, args.seed)
    real = router_module.plain, router_module.decoded
    router_module.plain = router_module.decoded = lambda text: text
    try:
        as_typed = run(router, caught, benign, args.seed)
    finally:
        router_module.plain, router_module.decoded = real
    print(f"{'disguise':<22} {'caught, as typed':>17} {'caught, read':>13} {'ratio':>6}"
          f" {'flagged, as typed':>18} {'flagged, read':>14}")
    for name in DISGUISES:
        (c0, f0), (c1, f1) = as_typed[name], reading[name]
        print(f"{name:<22} {c0:>17.1%} {c1:>13.1%} {c1 / max(c0, 1e-9):>5.2f}x {f0:>18.1%} {f1:>14.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
