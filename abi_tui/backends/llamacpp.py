"""Local inference on llama-cpp-python's low-level API, several sequences per decode step.

One llama.cpp context per model holds `parallel` sequences (each with its own `n_ctx` cells).
One thread per model runs the decode loop: each step puts one token per generating sequence,
plus chunks of any prompts being prefilled, into one batch (continuous batching: new requests
join between steps), then samples every sequence from its own sampler chain (a greedy one by
an argmax over its row of logits, see greedy_biases). The high-level
`Llama.create_completion` costs ~64 µs of Python per token and decodes one sequence at a time,
which is why this drives llama.cpp directly.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp as L
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import JSON_GBNF

from abi_tui.backends import tool_calls
from abi_tui.backends.base import (
    CancelFlag,
    GenerationRequest,
    Prepared,
    SamplingParams,
    TokenChannel,
    send_wakes,
)
from abi_tui.backends.chat_templates import TEMPLATES, TURN_ENDS, fallback_format
from abi_tui.backends.compute import COMPUTE
from abi_tui.backends.grammar import schema_grammar, tool_call_grammar
from abi_tui.backends.saved_prefixes import SavedPrefix, SavedPrefixes, common_prefix
from abi_tui.backends.text import StopMatcher
from abi_tui.backends.tool_calls import template_handles_tools
from abi_tui.errors import (
    ContextLengthExceeded,
    GenerationError,
    InvalidRequest,
    ModelLoadError,
    Unavailable,
)
from abi_tui.models.gguf_header import read_header
from abi_tui.models.llama_log import LLAMA_LOG, MemoryReport

log = logging.getLogger(__name__)

INLINE_TOKENIZE_CHARS = 16_000  # longer prompts are tokenized on a worker thread
PENALTY_LAST_N = 64
# DRY ("don't repeat yourself") breaks repeated sentences, the loop small chat models fall into.
DRY_BASE, DRY_ALLOWED_LENGTH, DRY_LAST_N = 1.75, 2, 256
DRY_BREAKERS = (b"\n", b":", b'"', b"*")
DRY_TEMPLATES = 4
# Pinned prompt prefixes (the three personas' system prompts): prefilled once per model in a
# sequence of their own (id `parallel`), kept as llama.cpp's serialised cells in host memory,
# and copied into a request's sequence, so a new conversation prefills only its own messages.
PINNED_PREFIXES = 3
# Kept cells shorter than this are not saved when their sequence is taken over: prefilling them
# again costs little.
MIN_SAVED_PREFIX = 32
# Host memory per model for kept prefixes saved when their sequence is taken over (a few MB for
# a short prompt, tens for a long one; llama-server's --cache-ram is the same idea).
SAVED_PREFIX_BYTES = 256 * 2**20
# Cells up to this size are copied between sequences through host memory (a few ms): a kept
# prefix moves to the lowest free id, a running prompt is shared with n choices. A larger kept
# prefix is reused where it is, at the cost of a split batch.
MOVE_LIMIT_BYTES = 32 * 2**20
# Rounds of the warm-up's timing of two sequences in one batch against apart (pairs_apart); one
# round costs about 40 ms on gemma-3 270M on 2 cores. Apart must win by the margin: nearly equal
# is not worth two graph runs.
PAIR_TIMING_ROUNDS, PAIR_MARGIN = 5, 0.97
PIN_CHUNK = 64  # prompt tokens of a pin prefilled per step while other sequences are generating
FLASH_ATTN = {"auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED}


def greedy_biases(params: SamplingParams) -> tuple[np.ndarray, np.ndarray] | None:
    """For a request that llama.cpp's chain would sample with logit bias and greedy alone
    (temperature 0, no penalties, no DRY; grammars are the caller's to rule out), its biases as
    arrays for argmax_with_bias; None where the chain is needed. llama_sampler_sample copies the
    whole vocabulary into a candidate array for every token: 295 µs on gemma-3's 262k tokens,
    where an argmax over the row takes 30 µs (2 ms of every decode step at 8 streams)."""
    if (params.temperature > 0 or params.presence_penalty or params.frequency_penalty
            or params.repeat_penalty != 1.0 or params.dry_multiplier > 0):
        return None
    tokens = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
    biases = np.fromiter(params.logit_bias.values(), dtype=np.float32, count=len(params.logit_bias))
    return tokens, biases


def argmax_with_bias(logits: np.ndarray, tokens: np.ndarray, biases: np.ndarray) -> int:
    """What llama.cpp's logit-bias then greedy samplers pick from one row of logits: the first
    token with the highest biased logit. The row is biased in place and restored (copying
    262k logits would cost more than the argmax)."""
    if not len(tokens):
        return int(logits.argmax())
    saved = logits[tokens]
    logits[tokens] += biases
    try:
        return int(logits.argmax())
    finally:
        logits[tokens] = saved


def prefer_apart(together: list[float], apart: list[float]) -> bool:
    """Whether timings of two sequences decoded apart beat one batch of two by PAIR_MARGIN
    (medians: one slow round is noise, not a verdict)."""
    return bool(together and apart) and float(np.median(apart)) < PAIR_MARGIN * float(np.median(together))


@dataclass
class LlamaOptions:
    n_ctx: int = 4096
    parallel: int = 4
    n_gpu_layers: int = -1
    threads: int | None = None
    n_batch: int = 512
    flash_attn: str = "auto"  # auto | on | off (config.CHOICES)


@dataclass(eq=False)
class Sequence:
    prepared: Prepared
    channel: TokenChannel
    cancel: CancelFlag
    tokens: list[int]
    stops: StopMatcher
    seq_id: int = -1
    sampler: Any = None
    greedy: tuple[np.ndarray, np.ndarray] | None = None  # (tokens, biases) when argmax_with_bias samples
    prefilled: int = 0
    pin_key: str | None = None  # a prefix to keep (pin_prefix), not a request to answer
    grammar: str | None = None  # GBNF the answer must follow (JSON schema, forced tool calls)
    logprobs: list[dict[str, Any]] | None = None  # per generated token, when the request asks
    n_past: int = 0
    generated: int = 0
    last_token: int = -1
    row: int = -1
    fed: list[int] = field(default_factory=list)  # generated tokens already in the KV cache
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def prefilling(self) -> bool:
        return self.prefilled < len(self.tokens)


class LlamaBackend:
    kind = "llama"

    def __init__(self, path: Path, name: str, options: LlamaOptions) -> None:
        """Load the model and create its context (blocking: call from a worker thread)."""
        self.path = Path(path)
        self.name = self.model_id = name
        self.options = options
        self.header = read_header(self.path)
        started = time.perf_counter()
        threads = options.threads or os.cpu_count() or 1
        model_params = L.llama_model_default_params()
        model_params.n_gpu_layers = options.n_gpu_layers if options.n_gpu_layers >= 0 else 999
        ctx_params = L.llama_context_default_params()
        ctx_params.n_seq_max = options.parallel + 1  # and one to prefill pinned prefixes in
        # A KV cache per sequence (a "stream" of n_ctx cells), as llama-server's slots: attention
        # reads only the sequence's own cells. In one shared cache every sequence reads past all
        # cells in use, other conversations' kept prefixes and the pinned persona prompts
        # included: measured on SmolLM2, an 8-sequence decode step took 79-102 ms beside 6,000
        # kept cells instead of 60-66 ms. The price: llama.cpp runs a batch as one graph only
        # while its sequence ids are consecutive and in order, so the slot choice keeps requests
        # on the lowest ids and the batch is built in id order; and cells are copied between
        # sequences through host memory (llama_state_seq_*: in proportion to the cells, where
        # llama_memory_seq_cp would copy whole streams).
        ctx_params.n_ctx = options.n_ctx * ctx_params.n_seq_max
        ctx_params.kv_unified = False
        ctx_params.swa_full = False
        ctx_params.n_batch = ctx_params.n_ubatch = options.n_batch
        # Only the last row of each sequence needs logits; the default sizes the output buffer
        # for n_batch rows of the vocabulary (512 MiB on gemma-3's 262k vocabulary).
        ctx_params.n_outputs_max = ctx_params.n_seq_max
        ctx_params.n_threads = ctx_params.n_threads_batch = threads
        ctx_params.flash_attn_type = FLASH_ATTN[options.flash_attn]
        with LLAMA_LOG.capture() as lines:
            try:
                self.model = internals.LlamaModel(path_model=str(self.path), params=model_params, verbose=True)
                self.ctx = internals.LlamaContext(model=self.model, params=ctx_params, verbose=True)
            except (ValueError, RuntimeError) as exc:
                detail = LLAMA_LOG.last_error(lines) or str(exc)
                raise ModelLoadError(f"llama.cpp could not load {self.path.name}: {detail}") from None
        self.memory = MemoryReport.from_log(lines)
        self.memory.weights = L.llama_model_size(self.model.model)
        self.load_ms = (time.perf_counter() - started) * 1000
        self.vocab = self.model.vocab
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_seq = min(options.n_ctx, L.llama_n_ctx_seq(self.ctx.ctx))
        self.n_ctx_total = L.llama_n_ctx(self.ctx.ctx)
        self.n_params = L.llama_model_n_params(self.model.model)
        self.capacity = options.parallel
        self._bos_text = self._piece_text(L.llama_vocab_bos(self.vocab), special=True)
        self._eos_text = self._piece_text(L.llama_vocab_eos(self.vocab), special=True)
        template = self.header.metadata.get("tokenizer.chat_template")
        if isinstance(template, str) and template.strip():
            self.chat_format, self.turn_ends = "gguf", []
        else:
            self.chat_format = fallback_format(self.header.architecture, self._is_single_token)
            template, self.turn_ends = TEMPLATES[self.chat_format], TURN_ENDS[self.chat_format]
        self.template = template
        self.tool_format = tool_calls.detect_format(template)
        self.formatter = Jinja2ChatFormatter(template, eos_token=self._eos_text, bos_token=self._bos_text)
        self._pieces: dict[int, bytes | None] = {}  # token -> text bytes, None for end-of-generation
        self._batch = L.llama_batch_init(options.n_batch, 0, 1)
        self._free_ids = list(range(options.parallel))
        self._slot_tokens: dict[int, list[int]] = {}  # what each free sequence's cells hold
        self._slot_saved: set[int] = set()  # free sequences whose kept cells are saved already (idle_step)
        self._saved = SavedPrefixes(SAVED_PREFIX_BYTES)
        self._pin_id = options.parallel
        self._dry: dict[float, Any] = {}  # DRY multiplier -> a set-up DRY sampler to clone
        self._pin_queue: deque[Sequence] = deque()
        self._pins: OrderedDict[str, SavedPrefix] = OrderedDict()  # least recently used first
        self.pins_ready: dict[str, threading.Event] = {}
        self.n_swa = L.llama_model_n_swa(self.model.model)
        self.pairs_apart = False  # decode a step of exactly two one-token rows as two graphs (_time_pairs)
        self._one = L.llama_batch_init(1, 0, 1)
        self.prompt_tokens_reused = 0
        self.prompt_tokens_prefilled = 0  # prompt tokens decoded for requests (pins apart)
        self._incoming: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self.closed = False
        self._embed_ctx: internals.LlamaContext | None = None
        self.tokens_generated = 0
        COMPUTE.call(self._warm_up)
        COMPUTE.register(self)

    # ----------------------------------------------------------------------------- helpers
    def _warm_up(self) -> None:
        """Decode one token once, as llama-server does: the first decode pages in the weights
        and builds the compute graph (about a second on gemma here), which the first request
        should not pay for. Then time how two sequences decode best (pairs_apart)."""
        batch = L.llama_batch_init(2, 0, 1)
        try:
            bos = max(L.llama_vocab_bos(self.model.vocab), 0)
            self._fill(batch, [(bos, 0, 0)])
            L.llama_decode(self.ctx.ctx, batch)
            if self.capacity >= 2:
                self.pairs_apart = self._time_pairs(batch, bos)
        finally:
            L.llama_batch_free(batch)
            L.llama_memory_clear(self.ctx.memory, True)

    def _time_pairs(self, batch: Any, token: int) -> bool:
        """Whether two sequences' next tokens decode faster as two graphs than as one batch.

        On CPU a batch of two is no cheaper than two single decodes, and with some weight types
        dearer: measured in-process on gemma-3 270M Q4_K_M, 2 cores, 21-22 ms a step against
        19-20 ms apart (8 interleaved runs); on SmolLM2 Q4_1 equal within 0-6%; from three
        sequences on, one batch wins (0.8-0.93x at 3, 0.5x at 8). A GPU batches two for about
        the price of one. So it is timed per model here, once: 0.22 s on gemma, 0.11 s on SmolLM2."""
        together: list[float] = []
        apart: list[float] = []
        pos = [1, 0]  # the next position of sequences 0 and 1 (0 holds the warm-up token)
        for _ in range(PAIR_TIMING_ROUNDS):
            started = time.perf_counter()
            self._fill(batch, [(token, pos[0], 0), (token, pos[1], 1)])
            L.llama_decode(self.ctx.ctx, batch)
            middle = time.perf_counter()
            for seq_id in (0, 1):
                self._fill(batch, [(token, pos[seq_id] + 1, seq_id)])
                L.llama_decode(self.ctx.ctx, batch)
            together.append(middle - started)
            apart.append(time.perf_counter() - middle)
            pos = [p + 2 for p in pos]
        return prefer_apart(together, apart)

    @staticmethod
    def _fill(batch: Any, rows: list[tuple[int, int, int]]) -> None:
        """A batch of (token, position, sequence id) rows, each asking for its logits."""
        for i, (token, pos, seq_id) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, True
            batch.seq_id[i][0] = seq_id
        batch.n_tokens = len(rows)

    def _piece_text(self, token: int, special: bool = False) -> str:
        if token < 0:
            return ""
        return self.model.token_to_piece(token, special).rstrip(b"\0").decode("utf-8", errors="replace")

    def _is_single_token(self, text: str) -> bool:
        return len(self.model.tokenize(text.encode(), False, True)) == 1

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        return self.model.tokenize(text.encode("utf-8"), add_bos, special)

    def _piece(self, token: int) -> bytes | None:
        piece = self._pieces.get(token, b"?")
        if piece == b"?":
            if L.llama_vocab_is_eog(self.vocab, token):
                piece = None
            else:
                buffer = ctypes.create_string_buffer(64)
                n = L.llama_token_to_piece(self.vocab, token, buffer, 64, 0, False)
                if n < 0:
                    buffer = ctypes.create_string_buffer(-n)
                    n = L.llama_token_to_piece(self.vocab, token, buffer, -n, 0, False)
                piece = buffer.raw[:n]
            self._pieces[token] = piece
        return piece

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        try:
            if tools and template_handles_tools(self.template):
                return self.formatter(messages=tool_calls.for_template(messages), tools=tools).prompt
            if tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
                messages = tool_calls.fallback_messages(messages, tools or [])
            return self.formatter(messages=messages).prompt
        except Exception as exc:  # a template's own raise_exception, or a Jinja error
            raise InvalidRequest(f"the model's chat template rejected these messages: {exc}", param="messages") from None

    def grammar_for(self, request: GenerationRequest, offered: list[dict[str, Any]]) -> tuple[str | None, bool]:
        """(GBNF text or None, whether it forces tool calls) for a request."""
        params = request.params
        choice = request.tool_choice
        if offered and (choice == "required" or isinstance(choice, dict)):
            schemas = {t["function"]["name"]: tool_calls.parameters_of(t) for t in offered}
            many = request.parallel_tool_calls and not isinstance(choice, dict)
            return tool_call_grammar(schemas, "tools", self.tool_format, many), True
        if params.json_schema is not None:
            return schema_grammar(params.json_schema, "response_format.json_schema.schema"), False
        if params.json_mode:
            return JSON_GBNF, False
        return None, False

    def _check_grammar(self, grammar: str, param: str) -> None:
        """llama.cpp parses the grammar here, so that a bad one is a 400 and not a failed stream."""
        sampler = L.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise InvalidRequest("llama.cpp could not parse the grammar made from this schema", param=param)
        L.llama_sampler_free(sampler)

    # ----------------------------------------------------------------------------- Backend
    async def prepare(self, request: GenerationRequest) -> Prepared:
        params = request.params
        for token in params.logit_bias:
            if not 0 <= token < self.n_vocab:
                raise InvalidRequest(f"logit_bias token {token} is outside this model's vocabulary (0-{self.n_vocab - 1})",
                                     param="logit_bias")
        offered = tool_calls.offered_tools(request.tools, request.tool_choice) if request.messages else []
        if isinstance(request.tool_choice, dict) and request.tools and not offered:
            raise InvalidRequest(f"tool_choice names {request.tool_choice['function']['name']!r}, which is not "
                                 "in 'tools'", param="tool_choice")
        grammar, forced = self.grammar_for(request, offered)
        if grammar is not None:
            self._check_grammar(grammar, "tools" if forced else "response_format")
        if request.messages is not None:
            text = self.render_chat(request.messages, offered)
            add_bos = L.llama_vocab_get_add_bos(self.vocab) and not (self._bos_text and text.startswith(self._bos_text))
            stops = params.stop + self.turn_ends
        else:
            text = request.prompt or ""
            add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
            stops = list(params.stop)
        if len(text) > INLINE_TOKENIZE_CHARS:
            tokens = await asyncio.to_thread(self.tokenize, text, add_bos=add_bos)
        else:
            tokens = self.tokenize(text, add_bos=add_bos)
        if not tokens:
            tokens = [L.llama_vocab_bos(self.vocab)]
        n_prompt = len(tokens)
        limit = self.n_ctx_seq
        max_tokens = params.max_tokens if params.max_tokens is not None else limit - n_prompt
        if n_prompt + max(max_tokens, 1) > limit:
            param = "messages" if request.messages is not None else "prompt"
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the completion). "
                "Please reduce the length of the prompt or max_tokens.",
                param=param,
            )
        return Prepared(request, n_prompt, max_tokens, payload=(tokens, stops, grammar),
                        tool_format=self.tool_format if offered else None, tools_forced=forced)

    def start(self, prepared: Prepared, channel: TokenChannel, cancel: CancelFlag) -> None:
        tokens, stops, grammar = prepared.payload
        seq = Sequence(prepared, channel, cancel, tokens, StopMatcher(stops), grammar=grammar)
        if prepared.request.params.logprobs:
            seq.logprobs = channel.extra.setdefault("logprobs", [])
        self._incoming.append(seq)
        COMPUTE.wake()

    def pin_prefix(self, key: str, text: str) -> threading.Event | None:
        """Keep `text`'s KV cells under `key` for later prompts that start with it (prefilled in
        the decode loop, a chunk per step, so running streams keep generating). Returns an event
        set once it is ready; None when it does not fit the pinned cells."""
        tokens = self.tokenize(text, add_bos=bool(L.llama_vocab_get_add_bos(self.vocab)))
        pinned = self._pins.get(key)
        ready = self.pins_ready.get(key)
        if ready is not None and (not ready.is_set() or (pinned is not None and pinned.tokens == tokens)):
            return ready  # in flight, or already there
        if not tokens or len(tokens) > self.n_ctx_seq // 2:
            return None
        done = threading.Event()
        self.pins_ready[key] = done
        seq = Sequence(Prepared(GenerationRequest(model=self.name, prompt=text), len(tokens), 0),
                       _PinChannel(done), CancelFlag(), tokens, StopMatcher([]), pin_key=key)
        self._pin_queue.append(seq)
        COMPUTE.wake()
        return done

    def describe(self) -> dict[str, Any]:
        return {"id": self.name, "kind": self.kind, "path": str(self.path),
                "architecture": self.header.architecture, "chat_format": self.chat_format,
                "n_ctx": self.n_ctx_seq, "parallel": self.capacity}

    def stats(self) -> dict[str, Any]:
        active = list(self._active)
        return {
            "model": self.name,
            "bytes": self.memory.to_dict(),
            "kv_cells_used": sum(s.n_past for s in active),
            "kv_cells_cached": sum(len(t) for t in list(self._slot_tokens.values())),
            "kv_cells_capacity": self.n_ctx_total,
            "context_per_request": self.n_ctx_seq,
            "sequences_active": len(active),
            "sequences_max": self.capacity,
            "load_ms": round(self.load_ms, 1),
            "tokens_generated": self.tokens_generated,
            "prompt_tokens_reused": self.prompt_tokens_reused,
            "prompt_tokens_prefilled": self.prompt_tokens_prefilled,
            "prefixes_pinned": {key: len(pin.tokens) for key, pin in list(self._pins.items())},
            "prefixes_saved": len(self._saved),
            "saved_prefix_bytes": self._saved.bytes,
            "pairs_decoded_apart": self.pairs_apart,
        }

    # ----------------------------------------------------------------------------- decode loop
    def has_work(self) -> bool:
        return bool(self._incoming) or bool(self._active) or bool(self._pin_queue)

    def step(self) -> None:
        """One decode step (on the compute thread): admit waiting sequences, decode, sample."""
        if self._incoming or self._pin_queue:
            send_wakes()  # admitting may copy cells for milliseconds: the last tokens go out first
        while self._incoming and self._free_ids:
            if self._prefilling_same_prompt(self._incoming[0]):
                break  # admitted next step, copying the cells being prefilled now
            self._admit(self._incoming.popleft())
        if self._pin_queue and not any(s.pin_key is not None for s in self._active):
            self._admit(self._pin_queue.popleft())  # one pin at a time, in its own sequence
        try:
            self._step()
        except Exception as exc:  # a llama.cpp failure ends these streams, not the server
            log.exception("decode step failed")
            for seq in list(self._active):
                self._finish(seq, None, GenerationError(f"generation failed: {exc}"))

    def _admit(self, seq: Sequence) -> None:
        if seq.cancel.is_set:
            seq.channel.close("cancelled")
            return
        if seq.pin_key is not None:
            seq.seq_id = self._pin_id
            L.llama_memory_seq_rm(self.ctx.memory, seq.seq_id, -1, -1)
            self._active.append(seq)
            return
        seq.seq_id, reused = self._pick_slot(seq.tokens)
        seq.prefilled = seq.n_past = reused
        try:
            params = seq.prepared.request.params
            seq.greedy = greedy_biases(params) if seq.grammar is None else None
            if seq.greedy is None:
                seq.sampler = self._build_sampler(params, seq.grammar)
        except Exception as exc:
            self._free_ids.append(seq.seq_id)
            seq.channel.close(None, GenerationError(f"could not set up sampling: {exc}"))
            return
        self._active.append(seq)

    def _prefilling_same_prompt(self, seq: Sequence) -> bool:
        """Whether a running sequence is prefilling the prompt `seq` starts with (the choices of
        an n > 1 request): waiting one step for it costs less than prefilling it twice."""
        return seq.pin_key is None and any(
            other.prefilling and other.pin_key is None and common_prefix(other.tokens, seq.tokens) >= len(seq.tokens) - 1
            for other in self._active)

    def _pick_slot(self, prompt: list[int]) -> tuple[int, int]:
        """A free sequence id and how many prompt tokens its KV cache already holds.

        Finished sequences keep their cells, so a prompt that repeats an earlier one (a chat
        sends its whole history every turn) prefills only what is new, as llama-server's
        prompt cache does; kept cells that a new prompt takes over are saved to host memory
        first, and come back when their prompt does. At least the last prompt token is decoded
        again for its logits.

        A request goes to the lowest free id, so that running sequences stay consecutive (one
        graph run a step: measured on SmolLM2, ids [0, 1] decoded in 21 ms a step, [1, 4] in
        32 ms); a prefix kept elsewhere is moved there, unless it is too large to move cheaply."""
        target = min(self._free_ids)
        reused, source = 0, None  # ("kept", id) | ("pin", key) | ("running", Sequence) | ("saved", key)
        for seq_id in self._free_ids:
            kept = self._slot_tokens.get(seq_id, ())
            common = common_prefix(kept, prompt)
            # Worth taking for a prefix that is most of the kept cells (a chat's next turn) or of
            # the prompt (a repeated request), as llama-server's slot similarity: a shared BOS or
            # first line is not worth another conversation's cells.
            if common > reused and 2 * common >= min(len(kept), len(prompt)):
                source, reused = ("kept", seq_id), common
        for key, pin in self._pins.items():
            common = common_prefix(pin.tokens, prompt)
            if common > reused and 2 * common >= min(len(pin.tokens), len(prompt)):
                source, reused = ("pin", key), common
        for other in self._active:  # a generating sequence's prompt (the choices of n > 1)
            if other.pin_key is None and not other.prefilling:
                common = common_prefix(other.tokens, prompt)
                if common > reused and 2 * common >= min(len(other.tokens), len(prompt)):
                    source, reused = ("running", other), common
        saved = self._saved.best(prompt, reused)
        if saved is not None:
            source, reused = ("saved", saved[0]), saved[1]
        memory = self.ctx.memory
        state = None  # the cells to copy in
        if source is not None and source[0] in ("kept", "running") and source[1] != target:
            state = self._state_of(source[1] if source[0] == "kept" else source[1].seq_id, MOVE_LIMIT_BYTES)
            if state is None and source[0] == "kept":
                target = source[1]  # too large to move: reused where it is
        if source == ("kept", target):
            self._save_kept(target, keeping=reused)
        else:
            self._save_kept(target, keeping=0)
            L.llama_memory_seq_rm(memory, target, -1, -1)
            if source is not None and source[0] == "kept":
                L.llama_memory_seq_rm(memory, source[1], -1, -1)  # moved
                self._slot_tokens.pop(source[1], None)
                self._slot_saved.discard(source[1])
            elif source is not None and source[0] == "saved":
                state = self._saved.take(source[1]).state
            elif source is not None and source[0] == "pin":
                state = self._pins[source[1]].state
                self._pins.move_to_end(source[1])
            if state is None or L.llama_state_seq_set_data(self.ctx.ctx, state, len(state), target) == 0:
                reused = 0  # nothing to copy, or llama.cpp found no room for it: prefill
        self._free_ids.remove(target)
        reused = min(reused, len(prompt) - 1)
        if reused > 0 and L.llama_memory_seq_rm(memory, target, reused, -1):
            # A sliding-window cache may no longer hold the window before `reused`: its oldest
            # cell is past the window's start, or (-1) it held only cells at `reused` and after.
            oldest = L.llama_memory_seq_pos_min(memory, target)
            if oldest < 0 or oldest > max(0, reused - self.n_swa):
                reused = 0
        else:
            reused = 0
        if reused == 0:
            L.llama_memory_seq_rm(memory, target, -1, -1)
        self._slot_tokens.pop(target, None)
        self._slot_saved.discard(target)
        self.prompt_tokens_reused += reused
        return target, reused

    def _needs_saving(self, seq_id: int, keeping: int) -> bool:
        """Whether a free sequence's kept cells are worth saving before a prompt that keeps only
        `keeping` of them takes it over (a prefix long enough to come back)."""
        kept = self._slot_tokens.get(seq_id)
        return (bool(kept) and len(kept) >= MIN_SAVED_PREFIX and 2 * keeping < len(kept)
                and seq_id not in self._slot_saved)

    def _state_of(self, seq_id: int, limit: int) -> Any:
        """A sequence's cells serialised by llama.cpp (a ctypes byte array), None over `limit`
        bytes or when llama.cpp writes nothing."""
        size = L.llama_state_seq_get_size(self.ctx.ctx, seq_id)
        if not size or size > limit:
            return None
        state = (ctypes.c_uint8 * size)()
        written = L.llama_state_seq_get_data(self.ctx.ctx, state, size, seq_id)
        if not written:
            return None
        return state if written == size else (ctypes.c_uint8 * written).from_buffer_copy(state)

    def _save_kept(self, seq_id: int, keeping: int) -> None:
        """Save a free sequence's kept cells to host memory before a prompt that keeps only
        `keeping` of them takes it over (worth it for a prefix long enough to come back)."""
        if not self._needs_saving(seq_id, keeping):
            return
        kept = self._slot_tokens[seq_id]
        state = self._state_of(seq_id, self._saved.budget_bytes)
        if state is not None:
            self._saved.add(kept, state)

    def idle_step(self) -> bool:
        """With nothing to decode (the compute thread calls this before it waits): save the
        largest free sequence's kept cells to host memory now, while they fit the budget without
        dropping anything saved, so that a request taking that sequence over later does not
        wait for the copy (a 1,500-token prompt on SmolLM2: 34 MB, 21-70 ms). Whether it saved
        one (the thread then checks for work and calls again)."""
        room = self._saved.budget_bytes - self._saved.bytes
        for seq_id in sorted(self._free_ids, key=lambda i: -len(self._slot_tokens.get(i, ()))):
            if not self._needs_saving(seq_id, keeping=0):
                continue
            state = self._state_of(seq_id, room)  # None when too large: saved at takeover, as before
            if state is not None:
                self._saved.add(self._slot_tokens[seq_id], state)
                self._slot_saved.add(seq_id)
                return True
        return False

    def _keep_pin(self, seq: Sequence) -> None:
        """A pin's prefill is done: its cells go to host memory, the least recently used pin
        beyond PINNED_PREFIXES is dropped, and its sequence is free for the next pin."""
        state = self._state_of(seq.seq_id, SAVED_PREFIX_BYTES)
        if state is not None:
            self._pins.pop(seq.pin_key, None)
            self._pins[seq.pin_key] = SavedPrefix(seq.tokens, state)
            while len(self._pins) > PINNED_PREFIXES:
                evicted, _ = self._pins.popitem(last=False)
                self.pins_ready.pop(evicted, None)
        self._finish(seq, "stop")

    def _dry_template(self, multiplier: float) -> Any:
        """A DRY sampler to clone: setting one up scans the vocabulary for the sequence breakers
        (66 ms on gemma-3's 262k tokens, paid before the first token), a clone copies the result."""
        template = self._dry.pop(multiplier, None)
        if template is None:
            breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*DRY_BREAKERS)
            template = L.llama_sampler_init_dry(self.vocab, multiplier, DRY_BASE, DRY_ALLOWED_LENGTH,
                                                DRY_LAST_N, breakers, len(DRY_BREAKERS))
            if not template:
                return None
            while len(self._dry) >= DRY_TEMPLATES:  # clients may send any multiplier
                L.llama_sampler_free(self._dry.pop(next(iter(self._dry))))
        self._dry[multiplier] = template  # most recently used last
        return template

    def _build_sampler(self, params: SamplingParams, grammar: str | None = None) -> Any:
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())

        def add(sampler: Any) -> None:
            if not sampler:
                L.llama_sampler_free(chain)
                raise ValueError("llama.cpp refused a sampler setting (an invalid grammar?)")
            L.llama_sampler_chain_add(chain, sampler)

        if grammar is not None:
            add(L.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root"))
        if params.logit_bias:
            biases = (L.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                biases[i].token, biases[i].bias = token, bias
            add(L.llama_sampler_init_logit_bias(self.n_vocab, len(params.logit_bias), biases))
        if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
            # This llama.cpp takes the vocabulary size first (see its llama.h).
            add(L.llama_sampler_init_penalties(self.n_vocab, PENALTY_LAST_N, params.repeat_penalty,
                                               params.frequency_penalty, params.presence_penalty))
        if params.dry_multiplier > 0:
            template = self._dry_template(params.dry_multiplier)
            add(L.llama_sampler_clone(template) if template else None)
        if params.temperature <= 0:
            add(L.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            add(L.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(L.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            add(L.llama_sampler_init_min_p(params.min_p, 1))
        add(L.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else L.LLAMA_DEFAULT_SEED
        add(L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _step(self) -> None:
        batch = self._batch
        batch.n_tokens = 0
        budget = self.options.n_batch
        for seq in list(self._active):
            if seq.cancel.is_set:
                self._finish(seq, "cancelled")
        # In sequence id order: llama.cpp runs consecutive ids as one graph (see __init__), and
        # a step whose sequences each bring one token (decoding, or a reused prompt's last
        # token) is one graph run. Every generating sequence gets its token (parallel <=
        # n_batch); prompts share what is left, requests before pins (higher ids).
        decoding = [s for s in self._active if not s.prefilling]
        budget -= len(decoding)
        for seq in sorted(self._active, key=lambda s: s.seq_id):
            if not seq.prefilling:
                self._add(seq.last_token, seq.n_past, seq.seq_id, True)
                seq.fed.append(seq.last_token)
                seq.row = batch.n_tokens - 1
                seq.n_past += 1
                continue
            seq.row = -1
            if budget <= 0:
                continue
            size = min(budget, PIN_CHUNK) if seq.pin_key is not None and decoding else budget
            chunk = seq.tokens[seq.prefilled: seq.prefilled + size]
            last = seq.prefilled + len(chunk) == len(seq.tokens)
            wants_logits = last and seq.pin_key is None
            for j, token in enumerate(chunk):
                self._add(token, seq.n_past + j, seq.seq_id, wants_logits and j == len(chunk) - 1)
            seq.prefilled += len(chunk)
            seq.n_past += len(chunk)
            if seq.pin_key is None:
                self.prompt_tokens_prefilled += len(chunk)
            budget -= len(chunk)
            if wants_logits:
                seq.row = batch.n_tokens - 1
        if batch.n_tokens == 0:
            return
        stepping = [seq for seq in self._active if seq.row >= 0] if self.pairs_apart and batch.n_tokens == 2 else []
        if len(stepping) == 2:
            # Two one-token rows: two graph runs cost less than one batch here (_time_pairs).
            for seq in stepping:
                self._fill(self._one, [(batch.token[seq.row], batch.pos[seq.row], seq.seq_id)])
                seq.row = 0
                self._decode(self._one)
                self._sample([seq])
            return
        self._decode(batch)
        self._sample(list(self._active))

    def _decode(self, batch: Any) -> None:
        send_wakes()  # the last step's tokens, now that the GIL is let go for the decode (hold_wakes)
        code = L.llama_decode(self.ctx.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def _sample(self, seqs: list[Sequence]) -> None:
        """Sample each sequence's next token from its row of the last decode's logits (pins
        whose prefill is done go to host memory)."""
        for seq in seqs:
            if seq.pin_key is not None and not seq.prefilling:
                self._keep_pin(seq)
                continue
            if seq.row < 0:
                continue
            row, seq.row = seq.row, -1
            if seq.greedy is not None:
                token = argmax_with_bias(self._logits(row), *seq.greedy)
            else:
                token = L.llama_sampler_sample(seq.sampler, self.ctx.ctx, row)
            if seq.logprobs is not None:
                self._record_logprobs(seq, row, token)
            self._emit(seq, token)

    def _logits(self, row: int) -> np.ndarray:
        """The last decode's logits for batch row `row`: a view of llama.cpp's buffer, not a copy."""
        return np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx.ctx, row), shape=(self.n_vocab,))

    def _record_logprobs(self, seq: Sequence, row: int, token: int) -> None:
        """The chosen token's log-probability and the most likely alternatives, from the model's
        own distribution (before bias, penalties, grammar and temperature), as OpenAI reports."""
        piece = self._piece(token)
        if piece is None:
            return  # the end of the answer is no token of it
        logits = self._logits(row)
        peak = float(logits.max())
        norm = peak + math.log(float(np.exp(logits - peak).sum()))
        entry = {"token": piece.decode("utf-8", errors="replace"), "logprob": float(logits[token]) - norm,
                 "bytes": list(piece), "top_logprobs": []}
        top = seq.prepared.request.params.top_logprobs
        if top:
            best = np.argpartition(logits, -top)[-top:]
            for alt in best[np.argsort(-logits[best], kind="stable")]:
                alt_piece = self._piece(int(alt))
                alt_bytes = alt_piece if alt_piece is not None else self._piece_text(int(alt), special=True).encode()
                entry["top_logprobs"].append({"token": alt_bytes.decode("utf-8", errors="replace"),
                                              "logprob": float(logits[alt]) - norm, "bytes": list(alt_bytes)})
        seq.logprobs.append(entry)

    def _add(self, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch = self._batch
        i = batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits
        batch.n_tokens = i + 1

    def _emit(self, seq: Sequence, token: int) -> None:
        piece = self._piece(token)
        if piece is None:
            self._finish(seq, "stop")
            return
        seq.generated += 1
        self.tokens_generated += 1
        text = seq.stops.feed(seq.decoder.decode(piece))
        if text:
            seq.channel.put(text)
        else:
            seq.channel.count_silent_token()
        if seq.stops.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= seq.prepared.max_tokens:
            self._finish(seq, "length")
        else:
            seq.last_token = token

    def _finish(self, seq: Sequence, reason: str | None, error: GenerationError | None = None) -> None:
        if reason in ("stop", "length"):
            tail = seq.stops.flush() if not seq.stops.stopped else ""
            tail += seq.decoder.decode(b"", final=True)
            if tail:
                seq.channel.put(tail, count=False)
        if seq in self._active:
            self._active.remove(seq)
        if seq.sampler is not None:
            L.llama_sampler_free(seq.sampler)
            seq.sampler = None
        if seq.pin_key is not None:
            if seq.seq_id >= 0:
                L.llama_memory_seq_rm(self.ctx.memory, seq.seq_id, -1, -1)
                seq.seq_id = -1
            seq.channel.close(reason, error)
            return
        if seq.seq_id >= 0:
            if reason in ("stop", "length"):  # keep the cells: the next turn may share the prefix
                self._slot_tokens[seq.seq_id] = (seq.tokens + seq.fed)[: seq.n_past]
            else:  # cancelled or failed: free its cells at once
                L.llama_memory_seq_rm(self.ctx.memory, seq.seq_id, -1, -1)
            self._free_ids.append(seq.seq_id)
            seq.seq_id = -1
        seq.channel.close(reason, error)

    # ----------------------------------------------------------------------------- embeddings
    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Mean-pooled, L2-normalised embeddings and the prompt token count (blocking).

        One compute job per text, so running streams keep stepping between them."""
        vectors, total = [], 0
        for text in texts:
            vector, n_tokens = COMPUTE.call(lambda text=text: self._embed_one(text))
            vectors.append(vector)
            total += n_tokens
        return vectors, total

    def _embed_one(self, text: str) -> tuple[list[float], int]:
        if self.closed:
            raise Unavailable(f"{self.name} was unloaded; retry with the current model", retry_after=1)
        if self._embed_ctx is None:
            params = L.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = min(self.n_ctx_seq, 2048)
            params.embeddings = True
            params.pooling_type = L.LLAMA_POOLING_TYPE_MEAN
            params.n_threads = params.n_threads_batch = self.options.threads or os.cpu_count() or 1
            # Not under LLAMA_LOG.capture(): a load on another thread must not stall the compute thread.
            self._embed_ctx = internals.LlamaContext(model=self.model, params=params, verbose=True)
        ctx = self._embed_ctx
        limit = L.llama_n_ctx(ctx.ctx)
        tokens = self.tokenize(text, add_bos=bool(L.llama_vocab_get_add_bos(self.vocab)), special=False)
        if len(tokens) > limit:
            raise ContextLengthExceeded(
                f"input of {len(tokens)} tokens is longer than the embedding context ({limit})", param="input")
        tokens = tokens or [L.llama_vocab_bos(self.vocab)]
        batch = L.llama_batch_init(len(tokens), 0, 1)
        try:
            L.llama_memory_clear(L.llama_get_memory(ctx.ctx), True)
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, True
            batch.n_tokens = len(tokens)
            if L.llama_decode(ctx.ctx, batch) != 0:
                raise GenerationError("llama.cpp failed to compute an embedding")
            pointer = L.llama_get_embeddings_seq(ctx.ctx, 0)
            vector = [pointer[i] for i in range(L.llama_model_n_embd(self.model.model))]
        finally:
            L.llama_batch_free(batch)
        norm = sum(v * v for v in vector) ** 0.5 or 1.0
        return [v / norm for v in vector], len(tokens)

    # ----------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Cancel what runs, then free llama.cpp memory, on the compute thread (never under a step)."""
        COMPUTE.unregister(self)
        COMPUTE.call(self._close)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for seq in list(self._active):
            self._finish(seq, "cancelled")
        for queue in (self._incoming, self._pin_queue):
            while queue:
                queue.popleft().channel.close("cancelled")
        for template in self._dry.values():
            L.llama_sampler_free(template)
        self._dry.clear()
        for batch in (self._batch, self._one):
            if batch is not None:
                L.llama_batch_free(batch)
        self._batch = self._one = None
        if self._embed_ctx is not None:
            self._embed_ctx.close()
            self._embed_ctx = None
        self.ctx.close()
        self.model.close()


class _PinChannel:
    """What a pin's Sequence reports to: nobody reads its tokens, one event says it is done."""

    def __init__(self, done: threading.Event) -> None:
        self.done = done

    def close(self, finish_reason: str | None, error: Any = None) -> None:
        self.done.set()
