"""Write tiny random-weight GGUF models for fast tests and benchmarks (no downloads).

The model is a ``llama``-architecture transformer of a few hundred KB that llama.cpp loads in
milliseconds. Its tokenizer is byte-level GPT-2 BPE: token id ``b`` is the byte ``b`` (in GPT-2's
``bytes_to_unicode`` spelling), so any UTF-8 text tokenizes to exactly one token per byte.

The weights are random but shaped so that sampling is safe for streaming tests:

* Only "allowed" tokens (printable ASCII, optionally newline) can ever be sampled. Hidden
  dimension 0 carries a constant that every layer leaves untouched (zero rows in the attention
  output and FFN down projections); the output matrix gives every other token a huge negative
  weight in that dimension, so its probability underflows to exactly 0 at any sane temperature.
  In particular the model never emits EOS, a control token or a partial UTF-8 byte, any of
  which would make llama-cpp-python hold back or end a stream.
* The current token's embedding mostly decides the next token: the output matrix maps each
  allowed token to its successor on a random cycle through all allowed tokens. Greedy output
  therefore walks that cycle (deterministic, and every character differs within one lap), while
  sampling at temperature 1 still spreads probability over many tokens.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, "<|im_start|>", "<|im_end|>")
BOS_ID = 256
EOS_ID = 257
# llama.cpp refuses a gpt2 tokenizer without merges and the gguf writer cannot store an empty
# array, so there is one merge of the bytes 0xC0 0xC1, which never occur in valid UTF-8: every
# str still tokenizes to one token per byte.
_DEAD_MERGE = ("\u00c0", "\u00c1")
N_VOCAB = 256 + len(SPECIAL_TOKENS) + 1

# Keyword arguments for ``llama_cpp.Llama`` that suit this model. One thread: the model is far
# too small to gain from more, and llama.cpp's OpenMP workers spin at barriers, so on a busy
# machine (a parallel test run) a second thread without a free core stalls a decode for
# hundreds of milliseconds.
LLAMA_KWARGS: dict[str, Any] = {"n_threads": 1, "n_threads_batch": 1, "verbose": False}

# How far below every allowed token a suppressed token's logit sits, per unit of the
# normalised dimension 0 (which is ~5 after the final RMS norm): logits ~5e4 lower underflow
# to probability 0 in float32 for any temperature below ~500.
_SUPPRESS = 10_000.0


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character mapping."""
    bs = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def allowed_token_ids(*, allow_newline: bool = True) -> list[int]:
    """Token ids the model can emit: printable ASCII (space to ``~``), plus newline if allowed."""
    ids = list(range(0x20, 0x7F))
    return [0x0A, *ids] if allow_newline else ids


def write_tiny_gguf(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int | None = None,
    n_ff: int | None = None,
    context_length: int = 4096,
    name: str = "tiny",
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    allow_newline: bool = True,
    add_bos: bool = True,
    layer_gain: float = 0.3,
    cycle_strength: float = 0.8,
) -> Path:
    """Write a tiny random llama model to ``path`` and return it as a Path.

    ``chat_template=None`` writes no ``tokenizer.chat_template``. ``layer_gain`` scales the
    random transformer layers (their contribution to the residual stream, i.e. how much context
    perturbs the next token; near 1.0 greedy output falls into short loops); ``cycle_strength``
    scales the successor logit (higher = more predictable sampling). Same arguments give a
    byte-identical file.
    """
    if n_embd % n_head:
        raise ValueError("n_embd must be divisible by n_head")
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    if n_head % n_head_kv:
        raise ValueError("n_head must be divisible by n_head_kv")
    n_ff = 2 * n_embd if n_ff is None else n_ff
    head_dim = n_embd // n_head
    n_embd_kv = head_dim * n_head_kv
    rng = np.random.default_rng(seed)
    path = Path(path)

    # Token embeddings: dimension 0 is the constant "suppression carrier", the rest a random
    # unit vector per token.
    u = rng.standard_normal((N_VOCAB, n_embd - 1))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    embd = np.concatenate([np.ones((N_VOCAB, 1)), u], axis=1)

    # Output matrix: allowed token s scores high after its predecessor on a random cycle (the
    # normalised hidden state is ~5.7 * [1, u_current]); everything else gets -_SUPPRESS on dim 0.
    allowed = allowed_token_ids(allow_newline=allow_newline)
    cycle = [allowed[i] for i in rng.permutation(len(allowed))]
    output = np.zeros((N_VOCAB, n_embd))
    output[:, 0] = -_SUPPRESS
    for i, tok in enumerate(cycle):
        output[tok, 0] = 0.0
        output[tok, 1:] = cycle_strength * u[cycle[i - 1]]

    def mat(n_out: int, n_in: int, *, carrier_row_zero: bool = False) -> np.ndarray:
        w = rng.standard_normal((n_out, n_in)) * (layer_gain / np.sqrt(n_in))
        if carrier_row_zero:
            w[0] = 0.0  # nothing may write into dimension 0 of the residual stream
        return w

    # numpy shapes are (out, in): ggml's ne order is the reverse.
    tensors: dict[str, np.ndarray] = {"token_embd.weight": embd}
    for i in range(n_layer):
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(n_embd),
            f"blk.{i}.attn_q.weight": mat(n_embd, n_embd),
            f"blk.{i}.attn_k.weight": mat(n_embd_kv, n_embd),
            f"blk.{i}.attn_v.weight": mat(n_embd_kv, n_embd),
            f"blk.{i}.attn_output.weight": mat(n_embd, n_embd, carrier_row_zero=True),
            f"blk.{i}.ffn_norm.weight": np.ones(n_embd),
            f"blk.{i}.ffn_gate.weight": mat(n_ff, n_embd),
            f"blk.{i}.ffn_up.weight": mat(n_ff, n_embd),
            f"blk.{i}.ffn_down.weight": mat(n_embd, n_ff, carrier_row_zero=True),
        }
    tensors |= {"output_norm.weight": np.ones(n_embd), "output.weight": output}

    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)] + [*SPECIAL_TOKENS, "".join(_DEAD_MERGE)]
    token_types = [gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
    token_types.append(gguf.TokenType.NORMAL)
    assert len(tokens) == N_VOCAB

    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(N_VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges([" ".join(_DEAD_MERGE)])
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for tname, data in tensors.items():
        # 1-D norm weights stay f32 (as in real llama GGUFs); matrices are f16 to halve the size.
        w.add_tensor(tname, data.astype(np.float32 if data.ndim == 1 else np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_not_gguf(path: str | os.PathLike[str], size: int = 4096) -> Path:
    """Write a file that is not a GGUF (wrong magic) but has a plausible size and .gguf name."""
    path = Path(path)
    line = b"this is not a GGUF model file\n"
    path.write_bytes((line * (size // len(line) + 1))[:size])
    return path


def write_truncated_gguf(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy the GGUF ``src`` to ``dst`` cut in the middle of its tensor data.

    The header, metadata and tensor table stay intact, so only a check of the tensor extents
    against the file size (or the loader itself) notices the damage.
    """
    src, dst = Path(src), Path(dst)
    data_offset = gguf.GGUFReader(src).data_offset
    size = src.stat().st_size
    with src.open("rb") as f:
        dst.write_bytes(f.read(data_offset + (size - data_offset) // 2))
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random-weight llama GGUF.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--no-chat-template", action="store_true")
    args = parser.parse_args(argv)
    path = write_tiny_gguf(
        args.path,
        seed=args.seed,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        chat_template=None if args.no_chat_template else DEFAULT_CHAT_TEMPLATE,
    )
    print(f"{path} {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
