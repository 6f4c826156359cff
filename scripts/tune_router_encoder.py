"""Tune a copy of the sentence encoder to route messages: low-rank adapters, trained on the corpus.

    pip install -e ".[tune]"                  # PyTorch and transformers, for this script only
    python scripts/tune_router_encoder.py     # about 10 minutes on this 2-core machine

The router's own heads read a frozen MiniLM embedding, which places "make my brother's brakes
fail" near "make my build fail". This script fine-tunes MiniLM itself as a four-way route
classifier (abbey, aviva, meta, policy: mean-pooled, then one linear layer), with rank-16
adapters (LoRA) on every attention and feed-forward matrix and the layer norms free, so that what
ships is 1.4 MB of adapters rather than a second 90 MB model. At run time the adapters are merged
into the packaged weights once (`models/sentence_model.py`) and llama.cpp runs the tuned copy
beside the shared encoder; the router blends the tuned classifier's probabilities with its own
(`scripts/train_router.py` chooses the blend on dev).

It trains twice with the same settings: on `train` alone, to write the tuned classifier's
probabilities for every `dev` row (what `train_router.py` chooses the blend and threshold on),
and on `train` and `dev`, to write the adapters that ship. The settings (rank 16, 4 epochs,
learning rate 5e-4, no dropout) were tried on dev beside fine-tuning every weight, which did about
as well in the router's blend but would ship a second 90 MB model, and beside the same adapters
with dropout, which did no better. `test` is never read. The tokens are the ones the encoder
gives at run time (llama.cpp's WordPiece, 128 at most, head and tail), so training and serving
see the same input.

Writes `abi_tui/personas/data/router_encoder.npz`.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from abi_tui.models import sentence_model  # noqa: E402
from abi_tui.models.sentence_encoder import shared_encoder  # noqa: E402
from abi_tui.personas.classifier import ADAPTER_PATH, ROUTES  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from train_router import CORPUS, load_corpus, route_of  # noqa: E402

RANK = 16
ALPHA = 2.0  # the adapters' output is scaled by this
EPOCHS = 4
LEARNING_RATE = 5e-4
HEAD_LEARNING_RATE = 1e-3
BATCH = 32
SEED = 0
# BERT's matrices that get adapters (module names end so), and the layer norms that are tuned
LORA_TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value",
                "output.dense", "intermediate.dense")  # output.dense: attention's and the FFN's
NORM_TARGETS = ("output.LayerNorm",)  # after attention and after the feed-forward layer
CHECK_ROWS = 24  # corpus rows whose probabilities ship with the adapters, for the parity test


def input_digest() -> str:
    h = hashlib.sha256()
    for path in (CORPUS, Path(__file__)):
        h.update(path.read_bytes().replace(b"\r\n", b"\n"))
    h.update(f"{sentence_model.DISTRIBUTION}=={sentence_model.package_version()}".encode())
    return h.hexdigest()


def build_model(torch, src: Path):
    from transformers import BertModel

    class LoRA(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear) -> None:
            super().__init__()
            self.base = base
            self.A = torch.nn.Parameter(torch.randn(RANK, base.in_features) / base.in_features ** 0.5)
            self.B = torch.nn.Parameter(torch.zeros(base.out_features, RANK))

        def forward(self, x):
            return self.base(x) + (x @ self.A.T @ self.B.T) * ALPHA

    class Router(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(src, add_pooling_layer=False)
            self.head = torch.nn.Linear(self.bert.config.hidden_size, len(ROUTES))
            for p in self.bert.parameters():
                p.requires_grad_(False)
            self.adapters: dict[str, LoRA] = {}
            for name in [n for n, _ in self.bert.named_modules()]:
                if name.endswith(LORA_TARGETS):
                    parent, _, leaf = name.rpartition(".")
                    adapter = LoRA(self.bert.get_submodule(name))
                    setattr(self.bert.get_submodule(parent), leaf, adapter)
                    self.adapters[f"{name}.weight"] = adapter
            for name, p in self.bert.named_parameters():
                if name.removesuffix(".weight").removesuffix(".bias").endswith(NORM_TARGETS):
                    p.requires_grad_(True)

        def forward(self, ids, mask):
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).float()
            return self.head((hidden * m).sum(1) / m.sum(1))  # mean pooling, as llama.cpp's

    return Router()


def batches(torch, tokens: list[list[int]], order: list[int], size: int):
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        width = max(len(tokens[i]) for i in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, :len(tokens[i])] = torch.tensor(tokens[i])
            mask[row, :len(tokens[i])] = 1
        yield chunk, ids, mask


def train(torch, src: Path, tokens: list[list[int]], labels: list[int], log=print):
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    model = build_model(torch, src)
    model.eval()  # dropout off (see above); gradients flow all the same
    tuned = [p for p in model.bert.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": tuned, "lr": LEARNING_RATE},
                             {"params": model.head.parameters(), "lr": HEAD_LEARNING_RATE}],
                            weight_decay=0.01)
    steps = EPOCHS * math.ceil(len(tokens) / BATCH)
    warm = 0.1 * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warm if s < warm else max(0.0, (steps - s) / (steps - warm)))
    loss_of = torch.nn.CrossEntropyLoss()
    y = torch.tensor(labels)
    for epoch in range(EPOCHS):
        # batches of similar lengths (less padding), in random order
        order = list(range(len(tokens)))
        rng.shuffle(order)
        groups = [sorted(order[i:i + BATCH * 50], key=lambda k: len(tokens[k]))
                  for i in range(0, len(order), BATCH * 50)]
        chunks = [g[i:i + BATCH] for g in groups for i in range(0, len(g), BATCH)]
        rng.shuffle(chunks)
        total = 0.0
        for chunk in chunks:
            _, ids, mask = next(batches(torch, tokens, chunk, len(chunk)))
            loss = loss_of(model(ids, mask), y[chunk])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log(f"  epoch {epoch + 1}: loss {total / len(chunks):.4f}")
    model.eval()
    return model


def probabilities(torch, model, tokens: list[list[int]]) -> np.ndarray:
    out = np.zeros((len(tokens), len(ROUTES)), dtype=np.float32)
    order = sorted(range(len(tokens)), key=lambda k: len(tokens[k]))
    with torch.no_grad():
        for chunk, ids, mask in batches(torch, tokens, order, 64):
            out[chunk] = torch.softmax(model(ids, mask), -1).numpy()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ADAPTER_PATH)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit('this script needs PyTorch and transformers: pip install -e ".[tune]"'
                         ) from None
    torch.set_num_threads(2)
    src = sentence_model.source_dir()
    encoder = shared_encoder()
    if src is None or encoder is None:
        raise SystemExit(f"the sentence encoder is not installed: {sentence_model.INSTALL_HINT}")
    rows = load_corpus()
    tokens = [encoder.tokens(r["text"]) for r in rows]
    labels = [ROUTES.index(route_of(r)) for r in rows]
    split = [r["split"] for r in rows]
    train_idx = [i for i, s in enumerate(split) if s == "train"]
    dev_idx = [i for i, s in enumerate(split) if s == "dev"]
    both_idx = train_idx + dev_idx

    print(f"fitting on train ({len(train_idx)} messages) for the dev probabilities")
    model = train(torch, src, [tokens[i] for i in train_idx], [labels[i] for i in train_idx])
    dev_probs = probabilities(torch, model, [tokens[i] for i in dev_idx])
    y_dev = np.array([labels[i] for i in dev_idx])
    print(f"tuned classifier alone on dev: accuracy {(dev_probs.argmax(1) == y_dev).mean():.3f}")

    print(f"fitting on train and dev ({len(both_idx)} messages) for the shipped adapters")
    model = train(torch, src, [tokens[i] for i in both_idx], [labels[i] for i in both_idx])
    check = both_idx[:: len(both_idx) // CHECK_ROWS][:CHECK_ROWS]
    arrays: dict[str, np.ndarray] = {}
    for name, adapter in model.adapters.items():
        arrays[f"lora_a/{name}"] = adapter.A.detach().numpy().astype(np.float16)
        arrays[f"lora_b/{name}"] = (adapter.B.detach().numpy() * ALPHA).astype(np.float16)
    for name, p in model.bert.named_parameters():
        if p.requires_grad and not name.endswith((".A", ".B")):
            arrays[f"norm/{name}"] = p.detach().numpy().astype(np.float32)
    np.savez_compressed(
        args.out, **arrays,
        head_weights=model.head.weight.detach().numpy().T.astype(np.float32),
        head_bias=model.head.bias.detach().numpy().astype(np.float32),
        dev_probs=dev_probs,
        check_texts=np.array([rows[i]["text"] for i in check]),
        check_probs=probabilities(torch, model, [tokens[i] for i in check]),
        base=np.array(f"{sentence_model.DISTRIBUTION}=={sentence_model.package_version()}"),
        input_sha256=np.array(input_digest()))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
