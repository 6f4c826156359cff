"""Persona chat: routing, moderation, the persona's prompt and sampling, history, vector memory,
persistence.

Moderation is the server's: a message the router flags as a policy violation is answered with
Abi's refusal for its rule and never reaches a model, whatever persona was asked for. A model
with a chat template gets the persona's system prompt; a base model gets a transcript it can
continue (`personas/transcript.py`). Each persona's prompt prefix is prefilled once per model
when it becomes active and reused by every conversation (`LlamaBackend.pin_prefix`).

The server owns the chat store and memory (docs/MEMORY.md). Memory opens at start-up, in the
background (chromadb takes a second to import). Its BM25 half lives in the chat database and
always works; its vector half needs an embedding model: the configured one, else the packaged
sentence encoder, else the active local model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from abi_tui.backends.base import GenerationRequest
from abi_tui.backends.engine import PERSONA_IDS, InferenceEngine, Stream
from abi_tui.config import ServerConfig, Settings
from abi_tui.errors import AbiError, ContextLengthExceeded, InvalidRequest
from abi_tui.memory.chats import ChatStore
from abi_tui.personas import (
    Persona,
    PersonaMetrics,
    PersonaRouter,
    RoutingDecision,
    get_persona,
    list_personas,
    sampling_for,
)
from abi_tui.personas.policy import SELF_HARM, refusal_text, support_text
from abi_tui.personas.transcript import STOPS, transcript_prefix, transcript_prompt

log = logging.getLogger(__name__)

MEMORY_SHARE = 4  # recalled items take at most a quarter of the context
HISTORY_SHARE = 2  # earlier turns of the conversation take at most half
TEMPLATE_MARGIN = 64  # tokens the chat template adds around the system prompt and the new message
ENCODER_WAIT_S = 5.0  # a message sent at start-up waits this long for the sentence encoder at most


@dataclass
class PersonaChat:
    """One persona turn being generated: what the route needs to stream and persist it."""

    stream: Stream
    decision: RoutingDecision
    conversation_id: str | None = None
    user_message_id: int | None = None
    assistant_message_id: int | None = None
    memory: list[dict[str, Any]] = field(default_factory=list)
    user_text: str = ""


class PersonaService:
    def __init__(self, settings: Settings, engine: InferenceEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.encoder: Any = None  # the packaged sentence encoder, once loaded (None: absent)
        self.tuned_encoder: Any = None  # its copy tuned for routing (personas/classifier.py)
        self._encoder_settled = asyncio.Event()  # loaded, or known to be absent
        self.router = PersonaRouter(embed=self._embed, embed_tuned=self._embed_tuned)
        self.metrics = PersonaMetrics()
        self.chats: ChatStore | None = None
        self.memory: Any = None  # HybridMemory once the chat store is open
        self.memory_backend: Any = None
        self._client: Any = None  # the chroma client, made once (two threads at start-up could both try)
        self._client_lock = threading.Lock()
        self._client_closed = False
        self.memory_state = "off"
        self.memory_error: str | None = None
        self._memory_lock = asyncio.Lock()
        self._warmed: weakref.WeakSet[Any] = weakref.WeakSet()  # backends whose persona prefixes are pinned
        self._opening: asyncio.Task | None = None
        self._filling: asyncio.Task | None = None
        engine.stream_listeners.append(self._on_stream_end)
        engine.active_listeners.append(self._on_active_model)

    # -------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.chats = await asyncio.to_thread(ChatStore, self.settings.chats_db)
        self._opening = asyncio.get_running_loop().create_task(self._open_at_start())

    async def _open_at_start(self) -> None:
        """The sentence encoder and its tuned copy (a second each, once per machine: converting
        them), then memory. A message sent meanwhile waits for the encoders (`route`); where they
        are not installed, routing reads words only."""
        from abi_tui.models.sentence_encoder import shared_encoder
        from abi_tui.personas.classifier import ADAPTER_PATH

        try:
            self.encoder = await asyncio.to_thread(shared_encoder)
            if self.encoder is not None and self.router.model.tuned is not None:
                try:
                    self.tuned_encoder = await asyncio.to_thread(shared_encoder, ADAPTER_PATH)
                except Exception:  # optional: the router's own heads route without it
                    log.exception("the tuned router encoder did not load")
        finally:
            self._encoder_settled.set()
        await self.open_memory_at_start()

    async def route(self, content: str, **kwargs: Any) -> tuple[Any, str]:
        """`decide` on a thread, once the encoder has settled: a message sent while the server
        starts waits for it (up to ENCODER_WAIT_S) rather than being routed by words alone, so
        the same message is routed the same way whenever it arrives."""
        if self._opening is not None and not self._encoder_settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._encoder_settled.wait(), ENCODER_WAIT_S)
        return await asyncio.to_thread(self.decide, content, **kwargs)

    def _embed(self, text: str) -> Any:
        return self.encoder.encode(text) if self.encoder is not None else None

    def _embed_tuned(self, text: str) -> Any:
        return self.tuned_encoder.encode(text) if self.tuned_encoder is not None else None

    async def stop(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
            await asyncio.gather(self._opening, return_exceptions=True)
            self._opening = None
        if self._filling is not None:
            self.memory.closing.set()
            await asyncio.gather(self._filling, return_exceptions=True)  # a thread: let it end
            self._filling = None
        self.memory = None
        await asyncio.to_thread(self._close_chroma_client)
        if self.chats is not None:
            await asyncio.to_thread(self.chats.close)
            self.chats = None

    async def ensure_memory(self, *, load: bool = True) -> Any:
        """Memory (memory/recall.py): the BM25 items in the chat database at once, the vectors of
        the current embedding model (one collection per model) once one is available; a model
        swap moves the vectors to the new model's collection. `load=False` binds only a model
        that is already resident (start-up must not load one)."""
        async with self._memory_lock:
            if self.chats is None:
                return None
            if self.memory is None:
                from abi_tui.memory.items import MemoryItems
                from abi_tui.memory.recall import HybridMemory

                self.memory = HybridMemory(MemoryItems(self.chats))
                self.memory_state = "lexical"
            try:
                backend = await self._embedding_source(load)
            except AbiError as exc:
                self.memory.vectors, self.memory_backend = None, None
                self.memory_state, self.memory_error = "no_embedding_model", exc.message
                return self.memory
            if backend is None or (self.memory.vectors is not None and self.memory_backend is backend):
                return self.memory
            self.memory_state = "opening"
            try:
                self.memory.vectors = await asyncio.to_thread(self._open_memory, backend)
                self.memory_backend = backend
                self.memory_state, self.memory_error = "ready", None
            except Exception as exc:  # a broken vector store must not break chat: BM25 goes on
                log.exception("vector memory unavailable")
                self.memory.vectors, self.memory_backend = None, None
                self.memory_state, self.memory_error = "error", str(exc)
                return self.memory
            if await asyncio.to_thread(self._new_collection):
                # A new embedding model: its collection is filled from the items remembered so
                # far, in the background (BM25 finds them meanwhile).
                self._filling = asyncio.get_running_loop().create_task(
                    asyncio.to_thread(self.memory.sync_vectors))
            try:
                restored = await asyncio.to_thread(self._restore_missing, self.memory)
                if restored:
                    log.info("memory: stored %d items of finished turns a crash had cut off", restored)
            except Exception:  # best effort, like every memory write
                log.exception("could not restore finished turns into memory")
            return self.memory

    def _new_collection(self) -> bool:
        return self.memory.vectors.count() == 0 and self.memory.items.count() > 0

    async def _embedding_source(self, load: bool) -> Any:
        """What embeds memory: `vector_store.embedding_model` when set, else the packaged
        sentence encoder when installed, else the active local model."""
        if not self.settings.vector_store.embedding_model:
            from abi_tui.memory import embedder

            encoder = await asyncio.to_thread(embedder.packaged_encoder)
            if encoder is not None:
                return encoder
        if load:
            return await self.engine.embedding_backend(None)
        return self._resident_embedding_backend()

    def _resident_embedding_backend(self) -> Any:
        name = self.settings.vector_store.embedding_model
        if name:
            resident = self.engine.pool.get_resident(name)
            return resident if hasattr(resident, "embed") else None
        backend = self.engine.active_backend()
        return backend if hasattr(backend, "embed") else None

    async def open_memory_at_start(self, wait_s: float = 120.0) -> None:
        """Open the vector store now rather than on the first message (chromadb's import and the
        embedder's reference set cost seconds), and bind the model once it is loaded."""
        try:
            await asyncio.to_thread(self._chroma_client)
        except Exception as exc:
            log.warning("vector store unavailable: %s", exc)
            self.memory_state, self.memory_error = "error", str(exc)
        deadline = time.monotonic() + wait_s
        while self.chats is not None and time.monotonic() < deadline:
            memory = await self.ensure_memory(load=False)
            if memory is None or memory.vectors is not None:
                return
            await asyncio.sleep(0.5)

    def _chroma_client(self) -> Any:
        from abi_tui.memory.vectors import make_client

        with self._client_lock:
            if self._client_closed:  # a start-up thread still running after stop: open nothing new
                raise RuntimeError("the server is stopping")
            if self._client is None:
                self._client = make_client(self.settings.vector_store.url, self.settings.vectors_dir)
            return self._client

    def _close_chroma_client(self) -> None:
        """Chroma keeps each store's system (its threads, a dozen open files) for the life of the
        process unless the client is closed: a server restarted in the same process must not
        pile them up. (`close` is chromadb 1.x's; older releases have nothing to call.)"""
        with self._client_lock:
            client, self._client, self._client_closed = self._client, None, True
        close = getattr(client, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:  # closing is best effort: the process may be ending anyway
                log.info("could not close the vector store: %s", exc)

    def _open_memory(self, backend: Any) -> Any:
        from abi_tui.memory.embedder import CenteredEmbedder, EncoderEmbedder
        from abi_tui.memory.recall import Fusion
        from abi_tui.memory.vectors import VectorMemory

        if hasattr(backend, "encode_many"):  # the packaged sentence encoder
            from abi_tui.models.sentence_model import NAME

            embed, model, lexicon = EncoderEmbedder(backend), NAME, None
        else:
            embed = CenteredEmbedder(lambda texts: backend.embed(texts)[0])
            model, lexicon = backend.model_id, self._lexicon(backend)
        vectors = VectorMemory(self._chroma_client(), embed, model)  # one collection per model
        self.memory.fusion = Fusion.load(embed.kind)
        self.memory.use_lexicon(lexicon)
        return vectors

    @staticmethod
    def _lexicon(backend: Any) -> Any:
        """Word vectors from the model's token embedding table (memory/wordvectors.py), when the
        model is a local GGUF; recall works without them, less well on paraphrases."""
        from abi_tui.memory.wordvectors import Lexicon, TokenVectors

        try:
            tokens = TokenVectors(backend.path, lambda text: backend.tokenize(text, add_bos=False, special=False),
                                  getattr(backend, "header", None))
        except Exception as exc:  # no path, no table, a quantisation gguf cannot read
            log.info("memory without word vectors for %s: %s", getattr(backend, "model_id", "?"), exc)
            return None
        return Lexicon(tokens)

    def _restore_missing(self, memory: Any, limit: int = 50) -> int:
        """The chat history is the record: finished turns whose memory write a crash (SIGKILL)
        cut off are stored now, under the same ids, so nothing is lost or doubled. A forgotten
        item keeps a tombstone, so it is not brought back."""
        if self.chats is None:
            return 0
        turns = self.chats.finished_turns(limit)
        done = memory.items.messages_stored([m.id for pair in turns for m in pair])
        restored = 0
        for user, answer in reversed(turns):  # oldest first
            for message in (user, answer):
                if message.id not in done:
                    restored += len(memory.remember(
                        conversation_id=message.conversation_id, role=message.role,
                        text=message.content, message_id=message.id, persona=answer.persona,
                        created=message.updated))
        return restored

    # -------------------------------------------------------------------------------- routing
    def decide(self, content: str, *, previous: str | None = None, forced: str | None = None
               ) -> tuple[RoutingDecision, str]:
        if forced is not None and forced not in ("abi", "abbey", "aviva"):
            raise InvalidRequest(f"unknown persona {forced!r}: use abi, abbey or aviva", param="persona")
        return self.router.route_message(content, previous=previous, override=forced)

    async def open(self, generation: GenerationRequest, decision: RoutingDecision, body: dict[str, Any],
                   messages: list[dict[str, str]], note: str | None = None) -> Stream:
        """The stream that answers `messages` as `decision` says: Abi's refusal for a policy
        violation (no model sees the request), else the persona's prompt on the model."""
        generation.persona = decision.persona
        if decision.policy and decision.policy != SELF_HARM:
            generation.messages, generation.prompt = messages, None
            return await self.engine.open_reply(generation, refusal_text(decision.policy))
        persona = get_persona(decision.persona)
        backend = await self.engine.target(generation.model).get_backend()
        self._apply_sampling(generation, decision, body)
        if uses_transcript(backend):
            generation.prompt, generation.messages = transcript_prompt(persona, messages, note), None
            generation.params.stop = [s for s in generation.params.stop if s not in STOPS] + STOPS
        else:
            system = persona.system_prompt + (f"\n\n{note}" if note else "")
            generation.messages, generation.prompt = [{"role": "system", "content": system}] + messages, None
        self.warm(backend)
        preface = support_text() if decision.policy == SELF_HARM else None
        try:
            return await self.engine.open(generation, preface=preface)
        except ContextLengthExceeded as exc:
            raise self._persona_too_long(exc, backend, persona) from None

    def _persona_too_long(self, exc: ContextLengthExceeded, backend: Any, persona: Persona) -> ContextLengthExceeded:
        """The user typed a short message and is told the prompt is too long: say what else is in
        it (the persona's instructions) and what to change."""
        try:
            instructions = self._token_counter(backend)(prefix_text(backend, persona))
        except Exception:  # a template that cannot render a lone system message: say it plainly
            instructions = None
        size = f" ({instructions:,} tokens)" if instructions else ""
        n_ctx = getattr(backend, "n_ctx_seq", None)
        fewer = "" if instructions and n_ctx and instructions >= n_ctx else ", or ask for fewer tokens (max_tokens)"
        return ContextLengthExceeded(
            f"{exc.message} Persona chat puts {persona.name}'s instructions{size} before the conversation: "
            f"load the model with a longer context (--n-ctx, or server.n_ctx; {ServerConfig.n_ctx} by "
            f"default){fewer}.", param=exc.param)

    @staticmethod
    def _apply_sampling(generation: GenerationRequest, decision: RoutingDecision, body: dict[str, Any]) -> None:
        """The persona's sampling, except where the client chose its own."""
        sampling = sampling_for(decision)
        params = generation.params
        if "temperature" not in body:
            params.temperature = sampling.temperature
        if "top_p" not in body and sampling.top_p is not None:
            params.top_p = sampling.top_p
        if "repeat_penalty" not in body:
            params.repeat_penalty = sampling.repeat_penalty
        if "dry_multiplier" not in body:
            params.dry_multiplier = sampling.dry_multiplier

    async def hook(self, state: Any, generation: GenerationRequest, body: dict[str, Any]
                   ) -> tuple[Stream, dict[str, Any]] | None:
        """For /api/stream, the WebSocket and /v1/chat/completions: `persona` or a persona model
        id opens the persona's stream (None: not a persona request)."""
        requested = body.get("persona")
        if requested is None and generation.model in PERSONA_IDS:
            requested = generation.model
        if requested is None:
            return None
        if not isinstance(requested, str) or requested not in PERSONA_IDS:
            raise InvalidRequest("'persona' must be one of auto, abi, abbey, aviva", param="persona")
        if generation.model in PERSONA_IDS:
            generation.model = None  # the persona runs on the default backend
        text = last_user_text(generation)
        decision, cleaned = await self.route(text, forced=None if requested == "auto" else requested)
        messages = [dict(m) for m in generation.messages] if generation.messages else [
            {"role": "user", "content": generation.prompt or ""}]
        for message in reversed(messages):
            if message["role"] == "user":
                message["content"] = cleaned
                break
        stream = await self.open(generation, decision, body, messages)
        return stream, decision.to_dict()

    # -------------------------------------------------------------------------------- prefixes
    def warm(self, backend: Any) -> None:
        """Pin each persona's prompt prefix in `backend`'s KV cache (once per model; prefilled in
        the background by the decode loop), Abbey, the default, first."""
        if not hasattr(backend, "pin_prefix") or backend in self._warmed:
            return
        self._warmed.add(backend)
        for persona in sorted(list_personas(), key=lambda p: p.id != "abbey"):
            try:
                backend.pin_prefix(f"persona:{persona.id}", prefix_text(backend, persona))
            except AbiError as exc:  # a template that refuses a lone system message: no pin, no harm
                log.info("no pinned prefix for %s on %s: %s", persona.id, backend.model_id, exc.message)

    def _on_active_model(self, name: str | None) -> None:
        """A new active model: warm its persona prefixes now, not on the first message (memory
        opens at start-up and binds to the model on the next turn)."""
        backend = self.engine.active_backend() if name is not None else None
        if backend is not None:
            self.warm(backend)

    # -------------------------------------------------------------------------------- chat turns
    async def open_turn(self, body: dict[str, Any], forced: str | None, generation: GenerationRequest) -> PersonaChat:
        chats = self._store()
        content = generation.messages[-1]["content"] if generation.messages else ""
        conversation_id = body.get("conversation_id")
        if conversation_id is not None and not isinstance(conversation_id, str):
            raise InvalidRequest("'conversation_id' must be a string", param="conversation_id")
        history = []
        previous = None
        if conversation_id:
            earlier = await asyncio.to_thread(chats.messages, conversation_id)
            history = [{"role": m.role, "content": m.content} for m in earlier if m.content and m.role in ("user", "assistant")]
            previous = next((m.persona for m in reversed(earlier) if m.role == "assistant" and m.persona), None)
        decision, cleaned = await self.route(content, previous=previous, forced=forced)
        memory = await self.ensure_memory()
        hits = []
        note = None
        backend = self.engine.active_backend()  # its tokenizer sizes the prompt (None: the mock)
        if memory is not None:
            from abi_tui.memory.recall import memory_prompt

            hits = await asyncio.to_thread(memory.search, cleaned, exclude_conversation=conversation_id)
            budget = getattr(backend, "n_ctx_seq", 4096) // MEMORY_SHARE
            note = memory_prompt(hits, budget, self._token_counter(backend))
        earlier = trim_history(history, self._history_budget(backend, decision, note, cleaned, generation),
                               self._token_counter(backend))
        while True:
            try:
                stream = await self.open(generation, decision, body, earlier + [{"role": "user", "content": cleaned}],
                                         note)
                break
            except ContextLengthExceeded:
                # The estimate missed the chat template's own tokens: keep the newer half of the
                # earlier turns and ask again, rather than fail a long conversation.
                if not earlier:
                    raise
                earlier = earlier[len(earlier) // 2 + 1:]
        try:
            if not conversation_id:
                conversation = await asyncio.to_thread(chats.create_conversation, None)
                conversation_id = conversation.id
            user_id = await asyncio.to_thread(chats.add_user_message, conversation_id, cleaned)
            assistant_id = await asyncio.to_thread(chats.begin_assistant, conversation_id, persona=decision.persona,
                                                   routing=decision.to_dict(), model=stream.model)
        except BaseException:  # a client gone (or a store error) here: the stream must not keep its slot
            stream.cancel()
            raise
        return PersonaChat(stream, decision, conversation_id, user_id, assistant_id,
                           [h.to_dict() for h in hits], cleaned)

    def record_pieces(self, turn: PersonaChat, pieces: list[str]) -> None:
        if self.chats is not None and turn.assistant_message_id is not None:
            self.chats.append_partial(turn.assistant_message_id, "".join(pieces))

    async def finish_turn(self, turn: PersonaChat, text: str) -> None:
        stream = turn.stream
        if self.chats is None or turn.assistant_message_id is None:
            return
        reason = stream.finish_reason or "cancelled"
        if stream.error is not None:
            reason = "error"
        usage = {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens}
        await asyncio.to_thread(
            self.chats.finish_assistant, turn.assistant_message_id, content=text, finish_reason=reason,
            model=stream.model, usage=usage, timings=stream.timings(),
            error=stream.error.message if stream.error else None)
        if reason in ("stop", "length") and self.memory is not None and turn.conversation_id:
            asyncio.get_running_loop().create_task(self._remember(turn, text))

    async def _remember(self, turn: PersonaChat, text: str) -> None:
        memory = self.memory
        try:
            for role, content, message_id in (("user", turn.user_text, turn.user_message_id),
                                              ("assistant", text, turn.assistant_message_id)):
                await asyncio.to_thread(memory.remember, conversation_id=turn.conversation_id, role=role,
                                        text=content, message_id=message_id, persona=turn.decision.persona,
                                        created=time.time())
        except Exception:  # memory is best effort; the chat is already saved
            log.exception("could not store the turn in memory")

    # -------------------------------------------------------------------------------- helpers
    def _store(self) -> ChatStore:
        if self.chats is None:
            raise AbiError("the chat store is not open yet", status=503)
        return self.chats

    def _history_budget(self, backend: Any, decision: RoutingDecision, note: str | None, content: str,
                        generation: GenerationRequest) -> int:
        """Tokens left for earlier turns: at most half the context, and never more than what the
        persona's prompt, the memory note, the new message and the answer leave (else a long
        conversation would end in context_length_exceeded)."""
        count = self._token_counter(backend)
        n_ctx = getattr(backend, "n_ctx_seq", 4096)
        fixed = (count(get_persona(decision.persona).system_prompt) + (count(note) if note else 0) + count(content)
                 + (generation.params.max_tokens or 0) + TEMPLATE_MARGIN)
        return max(0, min(n_ctx // HISTORY_SHARE, n_ctx - fixed))

    @staticmethod
    def _token_counter(backend: Any):
        if backend is not None and hasattr(backend, "tokenize"):
            return lambda text: len(backend.tokenize(text, add_bos=False, special=False))
        return lambda text: max(1, len(text) // 4)

    def _on_stream_end(self, stream: Stream) -> None:
        persona = stream.request.persona
        if persona is None:
            return
        timings = stream.timings()
        self.metrics.record(persona, latency_ms=timings["total_ms"], ttft_ms=timings["ttft_ms"],
                            prompt_tokens=stream.prompt_tokens, completion_tokens=stream.completion_tokens,
                            error=stream.error is not None)


def uses_transcript(backend: Any) -> bool:
    """A local model without a chat template of its own (a base model) continues a transcript."""
    return getattr(backend, "chat_format", "gguf") != "gguf"


def prefix_text(backend: Any, persona: Persona) -> str:
    """What every conversation with `persona` on `backend` starts with."""
    if uses_transcript(backend):
        return transcript_prefix(persona)
    return backend.render_chat([{"role": "system", "content": persona.system_prompt}])


def last_user_text(generation: GenerationRequest) -> str:
    if generation.messages:
        for message in reversed(generation.messages):
            if message["role"] == "user":
                return message["content"]
        return ""
    return generation.prompt or ""


def trim_history(history: list[dict[str, str]], budget: int, count) -> list[dict[str, str]]:
    """The most recent turns that fit the budget, oldest first."""
    kept: list[dict[str, str]] = []
    used = 0
    for message in reversed(history):
        cost = count(message["content"]) + 4
        if used + cost > budget:
            break
        kept.append(message)
        used += cost
    return list(reversed(kept))
