"""Stream the `traceEvents` array of a (possibly gzipped) Chrome-trace JSON file in slices.

Contract: `EventSlices(path)` yields byte strings, each the inside of a JSON array of WHOLE
events of the trace's `traceEvents`, in file order, as the file holds them (the parser reads
`ts` and `dur` straight into DECIMAL(38, 3): no double ever holds them). After the iteration,
`meta` holds every other top-level key (they may come before or after the array: Kineto writes
`baseTimeNanoseconds` last). Memory is bounded by a few slices, whatever the file size. Anything
that is not such a document raises BadInput. Gzip is decompressed with ISA-L (`isal`, 3-4x
zlib's speed).

How slices are cut: Kineto pretty-prints one event per `{ ... }` block at a fixed indent, so the
last `<indent>},<indent>{` of a buffer is an event boundary (found with one `rfind`). A wrong cut
can only produce an unbalanced slice, which the JSON parser rejects: the importer then reads the
file again with `careful=True`, where every cut comes from a bracket-depth scan that knows about
strings (vectorized with numpy). The end of the array is always found with that scan.

"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
from isal import igzip, isal_zlib

from hybridscope.errors import BadInput

CHUNK_BYTES = 16 << 20
FIRST_SLICE_BYTES = 2 << 20  # slices grow from this to CHUNK_BYTES
MAX_OUTSIDE_BYTES = 256 << 20  # header or trailer larger than this is not a trace we read
_ARRAY_START = re.compile(rb'"traceEvents"\s*:\s*\[')
QUOTE, BACKSLASH = 34, 92
_BRACKET = np.zeros(256, bool)
_BRACKET[list(b"{}[]")] = True
_PAD = 32  # spare bytes kept past the data in the read buffer
_GZIP_ERRORS = (OSError, EOFError, isal_zlib.error)


class EventSlices:
    """Iterate slices of whole events; see the module docstring."""

    def __init__(self, path: Path, *, careful: bool = False, chunk_bytes: int | None = None,
                 on_progress: Callable[[int], None] | None = None):
        self.path = Path(path)
        self.careful = careful
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES
        self.on_progress = on_progress
        self.meta: dict = {}
        self.head_meta: dict = {}  # the top-level keys before traceEvents, once the first slice is out

    # -- reading ------------------------------------------------------------------------------
    def _open(self):
        raw = open(self.path, "rb")  # noqa: SIM115 - closed by __iter__
        self._raw = raw
        if raw.read(2) == b"\x1f\x8b":
            raw.seek(0)
            return igzip.IGzipFile(fileobj=raw, mode="rb")
        raw.seek(0)
        return raw

    def _read(self, f, n: int) -> bytes:
        try:
            data = f.read(n)
        except _GZIP_ERRORS as e:
            raise BadInput(f"{self.path}: truncated or corrupt gzip data ({e})") from None
        if self.on_progress is not None:
            self.on_progress(self._raw.tell())
        return data

    def _fill(self, f, buf: bytearray, size: int, want: int) -> tuple[bytearray, int, bool]:
        """Read up to `want` bytes into `buf` after `size` bytes (decompressing straight into it);
        return the buffer (grown if needed), the new size and whether the input is exhausted."""
        if size + want + _PAD > len(buf):
            buf.extend(bytes(size + want + _PAD - len(buf)))
        got = 0
        try:
            with memoryview(buf) as view, view[size:size + want] as room:
                while got < want and (n := f.readinto(room[got:])):
                    got += n
        except _GZIP_ERRORS as e:
            raise BadInput(f"{self.path}: truncated or corrupt gzip data ({e})") from None
        if self.on_progress is not None:
            self.on_progress(self._raw.tell())
        return buf, size + got, got < want

    def __iter__(self) -> Iterator[bytes | memoryview]:
        with self._open() as f:
            try:
                yield from self._slices(f)
            finally:
                self._raw.close()

    def _slices(self, f) -> Iterator[bytes | memoryview]:
        """Yield the inside of the array (events without the brackets), slice by slice. A
        memoryview yielded is valid until the next item is asked for."""
        header, rest = self._header(f)
        try:  # best effort: lets the importer know the rank early; `meta` is the checked version
            head = orjson.loads(header + b'"traceEvents": null}')
            self.head_meta = head if isinstance(head, dict) else {}
        except orjson.JSONDecodeError:
            pass
        pattern = _boundary_pattern(rest)
        buf = bytearray(len(rest) + 2 * self.chunk_bytes + _PAD)
        size = len(rest)
        buf[:size] = rest
        del rest
        eof = False
        target = min(self.chunk_bytes, FIRST_SLICE_BYTES)  # a small first slice starts the parser early
        while True:
            while size < target and not eof:
                buf, size, eof = self._fill(f, buf, size, target - size)
            target = min(2 * target, self.chunk_bytes)
            cut = -1 if (self.careful or pattern is None) else buf.rfind(pattern, 0, size)
            if cut >= 0:
                end = cut + len(pattern) // 2  # just past the event's closing brace
                nxt, closed = end + 1, False  # past the comma
            else:
                end, nxt, closed = scan_elements(buf, size, self.path)
            if end > 0:
                with memoryview(buf) as view, view[:end] as events:
                    yield events
            if closed:
                self.meta = self._finish(f, header, bytes(buf[nxt:size]))
                return
            if cut < 0 and eof:
                raise BadInput(f"{self.path}: the traceEvents array never closes (truncated file?)")
            if end <= 0 and size > 64 * self.chunk_bytes:
                raise BadInput(f"{self.path}: one trace event is larger than {size >> 20} MB")
            buf[: size - nxt] = buf[nxt:size]  # the rest moves to the front; the buffer keeps its size
            size -= nxt
            if end <= 0 and not eof:  # not one whole event yet: read more before scanning again
                buf, size, eof = self._fill(f, buf, size, self.chunk_bytes)

    def _header(self, f) -> tuple[bytes, bytes]:
        buf = b""
        while True:
            m = _ARRAY_START.search(buf, max(0, len(buf) - FIRST_SLICE_BYTES - 32))
            if m:
                head = buf[:m.start()]
                if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
                    raise BadInput(f"{self.path}: not a JSON object at the top")
                return head, buf[m.end():]
            data = self._read(f, FIRST_SLICE_BYTES // 2)
            if not data or len(buf) > MAX_OUTSIDE_BYTES:
                raise BadInput(f"{self.path}: no traceEvents array (not a Kineto/Chrome trace?)")
            buf += data

    def _finish(self, f, header: bytes, trailer: bytes) -> dict:
        parts = [trailer]
        size = len(trailer)
        while data := self._read(f, self.chunk_bytes):
            parts.append(data)
            size += len(data)
            if size > MAX_OUTSIDE_BYTES:
                raise BadInput(f"{self.path}: more than {MAX_OUTSIDE_BYTES >> 20} MB after traceEvents")
        doc = header + b'"traceEvents": null' + b"".join(parts)
        try:
            meta = orjson.loads(doc)
        except orjson.JSONDecodeError as e:
            raise BadInput(f"{self.path}: malformed JSON around traceEvents ({e})") from None
        if not isinstance(meta, dict):
            raise BadInput(f"{self.path}: the top of the document is not a JSON object")
        meta.pop("traceEvents", None)
        return meta


def _boundary_pattern(buf: bytes) -> bytes | None:
    """`<indent>},<indent>{` from the whitespace before the first event, when it has a newline
    (one-line JSON has no indent that separates top-level events from nested objects)."""
    i = 0
    while i < len(buf) and buf[i] in b" \t\r\n":
        i += 1
    indent = buf[:i]
    if b"\n" not in indent:
        return None
    indent = indent[indent.rindex(b"\n"):]
    return indent + b"}," + indent + b"{"


def scan_elements(buf: bytearray, size: int, path: Path) -> tuple[int, int, bool]:
    """Bracket-depth scan of `buf[:size]`, which starts inside the array between elements.

    Returns (end, next, closed): `buf[:end]` holds whole elements (end 0: none complete),
    `buf[next:]` is what follows (the next element, or after the array's `]` when `closed`).
    """
    a = np.frombuffer(buf, np.uint8, count=size)
    quotes = _unescaped_quotes(a)
    # one compare finds { } [ ] (0x7B 0x7D 0x5B 0x5D, equal but for bits 0x20 0x04 0x02), with
    # Y _ y DEL, which the exact check drops; then those inside strings are dropped
    brackets = np.flatnonzero((a & 0xD9) == 0x59)
    brackets = brackets[_BRACKET[a[brackets]]]
    brackets = brackets[(np.searchsorted(quotes, brackets) & 1) == 0]
    step = np.where(a[brackets] & 0x02, 1, -1)  # opening '{' '[' have bit 0x02 set
    depth = np.cumsum(step)
    out = np.flatnonzero(depth < 0)
    closed = out.size > 0
    if closed:
        stop = brackets[out[0]]
        top = np.flatnonzero(depth[: out[0]] == 0)
    else:
        stop = size
        top = np.flatnonzero(depth == 0)
    if closed:
        last = brackets[top[-1]] + 1 if top.size else 0
        if buf[last:stop].strip(b" \t\r\n") not in (b"", b","):
            raise BadInput(f"{path}: malformed traceEvents array (a value that is not an object?)")
        return last, int(stop) + 1, True
    for end in (brackets[top[-2:]] + 1)[::-1].tolist():
        comma = buf.find(b",", end, size)
        if comma < 0:  # the buffer's last element may be followed by `]` not read yet
            continue
        if buf[end:comma].strip(b" \t\r\n"):
            raise BadInput(f"{path}: malformed traceEvents array near byte {end}")
        return end, comma + 1, False
    return 0, 0, False


def _unescaped_quotes(a: np.ndarray) -> np.ndarray:
    q = np.flatnonzero(a == QUOTE)
    maybe = q[(q > 0) & (a[q - 1] == BACKSLASH)]
    if not maybe.size:
        return q
    escaped = []
    for p in maybe.tolist():  # rare: a quote after a backslash; odd runs of backslashes escape it
        j = p - 1
        while j >= 0 and a[j] == BACKSLASH:
            j -= 1
        if (p - 1 - j) % 2:
            escaped.append(p)
    return np.setdiff1d(q, np.asarray(escaped, dtype=q.dtype), assume_unique=True)
