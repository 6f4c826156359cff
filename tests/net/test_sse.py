"""The one SSE module: frames written by the server parse back whatever the line endings, the
comments and the byte boundaries of the reads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_tui.net.sse import (
    LineSplitter,
    LineTooLong,
    SseDecoder,
    SseEvent,
    comment_frame,
    parse_sse,
    sse_frame,
)

NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=":"), min_size=1,
                max_size=12).filter(lambda s: s == s.strip())
DATA = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
ENDINGS = st.sampled_from(["\n", "\r", "\r\n"])


def written(events: list[tuple[str, str | None, str | None]], ending: str, comments: bool) -> bytes:
    """The stream a server writes, with `ending` for every line end (sse_frame writes LF)."""
    out = b"".join(
        (comment_frame("keep-alive") if comments else b"") + sse_frame(data, event=name, event_id=ident)
        for data, name, ident in events)
    return out.replace(b"\n", ending.encode())


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(DATA, st.none() | NAMES, st.none() | st.integers(0, 99).map(str)),
                       min_size=1, max_size=5),
       ending=ENDINGS, comments=st.booleans(), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_frames_parse_back_through_any_line_ending_and_any_split(events, ending, comments, cuts):
    stream = written(events, ending, comments)
    decoder = SseDecoder(comments=True)
    got = [e for piece in split_at(stream, cuts) for e in decoder.feed(piece)] + decoder.close()
    assert [e.comment for e in got if e.comment is not None] == (["keep-alive"] * len(events) if comments else [])
    expected = [SseEvent(data.replace("\r\n", "\n").replace("\r", "\n"), name, ident) for data, name, ident in events]
    assert [e for e in got if e.comment is None] == expected


@given(text=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1), cut=st.integers(0, 400))
def test_a_character_split_between_reads_is_decoded_whole(text, cut):
    stream = sse_frame(text.replace("\r", ""))
    cut %= len(stream)
    decoder = SseDecoder()
    assert [e.data for e in decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])] == [text.replace("\r", "")]


def test_fields_as_the_format_says():
    decoder = SseDecoder(comments=True)
    stream = (b"\xef\xbb\xbfdata\n\n"          # a BOM first; a field without a colon has an empty value
              b"event: only\n\n"              # no data: not dispatched
              b"id: 7\nretry: 1500\ndata:x\ndata:  y\n\n"  # one space after the colon is dropped, not two
              b"retry: soon\nunknown: z\ndata: 1\n\n"      # retry must be digits; unknown fields ignored
              b": note\n")
    got = decoder.feed(stream)
    assert got == [SseEvent(""), SseEvent("x\n y", None, "7", 1500), SseEvent("1"), SseEvent(comment="note")]
    assert decoder.last_id == "7" and decoder.retry_ms == 1500
    assert decoder.feed(b"data: no end") == [] and decoder.close() == []  # an unfinished event is dropped


def test_parse_sse_keeps_comments_and_the_fields_set():
    text = ": hi\r\n\r\nevent: abi.token\r\nid: 3\r\ndata: {\"a\": 1}\r\n\r\ndata: last\n\n"
    assert parse_sse(text) == [{"comment": "hi"}, {"data": '{"a": 1}', "event": "abi.token", "id": "3"},
                               {"data": "last"}]


def test_line_splitter_pairs_a_crlf_split_across_reads_and_bounds_a_line():
    lines = LineSplitter(max_line=16)
    assert lines.feed(b'{"a":1}\r') == [b'{"a":1}']
    assert lines.feed(b'\n{"b":2}\n\n{"c"') == [b'{"b":2}', b""]
    assert lines.close() == [b'{"c"']
    with pytest.raises(LineTooLong):
        lines.feed(b"x" * 17)
