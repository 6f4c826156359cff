"""Persona chat: routing, moderation, the persona's prompt and sampling, history, vector memory,
persistence.

Moderation is the server's: a message the router flags as a policy violation is answered with
Abi's refusal for its rule and never reaches a model, whatever persona was asked for. A model
with a chat template gets the persona's system prompt; a base model gets a transcript it can
continue (`personas/transcript.py`). Each persona's prompt prefix is prefilled once per model
when it becomes active and reused by every conversation (`LlamaBackend.pin_prefix`).

The server owns the chat store and the vector store. Memory opens in the background when a
model becomes active (chromadb takes a second to import) and needs an embedding model: the
configured one, else the active local model; without either, turns are still persisted in SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from abi_tui.backends.base import GenerationRequest
from abi_tui.backends.engine import PERSONA_IDS, InferenceEngine, Stream
from abi_tui.config import Settings
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

MEMORY_SHARE = 4  # retrieved turns take at most a quarter of the context (SPEC §5.4)
HISTORY_SHARE = 2  # earlier turns of the conversation take at most half
TEMPLATE_MARGIN = 64  # tokens the chat template adds around the system prompt and the new message


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
        self.router = PersonaRouter()
        self.metrics = PersonaMetrics()
        self.chats: ChatStore | None = None
        self.memory: Any = None  # VectorMemory once an embedding model is there
        self.memory_backend: Any = None
        self._client: Any = None
        self.memory_state = "off"
        self.memory_error: str | None = None
        self._memory_lock = asyncio.Lock()
        self._warmed: weakref.WeakSet[Any] = weakref.WeakSet()  # backends whose persona prefixes are pinned
        self._tasks: set[asyncio.Task] = set()
        engine.stream_listeners.append(self._on_stream_end)
        engine.active_listeners.append(self._on_active_model)

    # -------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.chats = await asyncio.to_thread(ChatStore, self.settings.chats_db)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.chats is not None:
            await asyncio.to_thread(self.chats.close)
            self.chats = None

    async def ensure_memory(self) -> Any:
        """The vector store for the current embedding model (one collection per model), opened
        once one is available; a model swap moves memory to the new model's collection."""
        async with self._memory_lock:
            try:
                backend = await self.engine.embedding_backend(None)
            except AbiError as exc:
                self.memory, self.memory_state, self.memory_error = None, "no_embedding_model", exc.message
                return None
            if self.memory is not None and self.memory_backend is backend:
                return self.memory
            self.memory_state = "opening"
            try:
                self.memory = await asyncio.to_thread(self._open_memory, backend)
                self.memory_backend = backend
                self.memory_state, self.memory_error = "ready", None
            except Exception as exc:  # a broken store must not break chat
                log.exception("vector memory unavailable")
                self.memory, self.memory_state, self.memory_error = None, "error", str(exc)
                return None
            try:
                restored = await asyncio.to_thread(self._restore_missing, self.memory)
                if restored:
                    log.info("vector memory: stored %d messages of finished turns a crash had cut off", restored)
            except Exception:  # best effort, like every memory write
                log.exception("could not restore finished turns into vector memory")
            return self.memory

    def _open_memory(self, backend: Any) -> Any:
        from abi_tui.memory.embedder import CenteredEmbedder
        from abi_tui.memory.vectors import VectorMemory, make_client

        store = self.settings.vector_store
        embed = CenteredEmbedder(lambda texts: backend.embed(texts)[0])
        if self._client is None:
            self._client = make_client(store.url, self.settings.vectors_dir)
        return VectorMemory(self._client, embed, backend.model_id, threshold=store.threshold)

    def _restore_missing(self, memory: Any, limit: int = 50) -> int:
        """The chat store is the record: finished turns whose vector write a crash (SIGKILL)
        cut off are stored now, under the same ids, so nothing is lost or doubled."""
        from abi_tui.memory.vectors import message_turn_id

        if self.chats is None:
            return 0
        turns = self.chats.finished_turns(limit)
        ids = [message_turn_id(m.id) for pair in turns for m in pair]
        missing = memory.missing(ids)
        for user, answer in reversed(turns):  # oldest first
            for message in (user, answer):
                if message_turn_id(message.id) in missing:
                    memory.add_turn(conversation_id=message.conversation_id, persona=answer.persona, role=message.role,
                                    text=message.content, ts=message.updated,
                                    turn_id=message_turn_id(message.id))
        return len(missing)

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
        return await self.engine.open(generation, preface=preface)

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
        decision, cleaned = self.decide(text, forced=None if requested == "auto" else requested)
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
        """A new active model: warm its persona prefixes and open memory now, not on the first message."""
        if name is None:
            return
        backend = self.engine.active_backend()
        if backend is not None:
            self.warm(backend)
        task = asyncio.get_running_loop().create_task(self.ensure_memory())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        decision, cleaned = self.decide(content, previous=previous, forced=forced)
        memory = await self.ensure_memory()  # already opening since the model became active
        hits = []
        note = None
        backend = self.engine.active_backend()  # its tokenizer sizes the prompt (None: the mock)
        if memory is not None:
            hits = await asyncio.to_thread(memory.search, cleaned, exclude_conversation=conversation_id)
            budget = getattr(backend, "n_ctx_seq", 4096) // MEMORY_SHARE
            from abi_tui.memory.vectors import memory_prompt

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
        from abi_tui.memory.vectors import message_turn_id

        memory = self.memory
        try:
            for role, content, message_id in (("user", turn.user_text, turn.user_message_id),
                                              ("assistant", text, turn.assistant_message_id)):
                await asyncio.to_thread(memory.add_turn, conversation_id=turn.conversation_id,
                                        persona=turn.decision.persona, role=role, text=content, ts=time.time(),
                                        turn_id=message_turn_id(message_id) if message_id is not None else None)
        except Exception:  # memory is best effort; the chat is already saved
            log.exception("could not store the turn in vector memory")

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
