"""A Redis reply parser that refuses replies larger than a byte cap.

redis-py's parsers read until a reply is complete: a server that announces a 2 GB bulk string (or an
endless status line, or an array of millions of elements) makes the client buffer all of it. This
parser counts the bytes it reads for each reply and fails the read with ``ReplyTooLarge`` (a protocol
error) once they pass ``max_reply_bytes``; it never reads more than one byte past the cap, so a hostile
target costs at most the cap. (In a pipeline, bytes that arrived in the same read as the previous reply
count against that one: a reply may pass the cap by one socket read.) redis-py drops the connection on
any error from the parser; the next probe builds a new one.

Counting bytes is not enough for aggregates: hiredis allocates a slot per announced element as soon as
it reads ``*N``, so ``*2147483647`` costs 16 GB before a single element arrives. ``ReplyScanner`` reads
every chunk ahead of hiredis and refuses a header whose announced size cannot fit in its reply's cap:
hiredis is fed the bytes before it, and the read after fails. A dropped connection releases whatever
partial reply hiredis holds.
"""

from __future__ import annotations

import re
from typing import Any

from redis._parsers.hiredis import _AsyncHiredisParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse

MAX_REPLY_BYTES = 1 << 20  # 1 MiB: INFO is ~6 KB, a queue pipeline's replies are smaller still

# The RESP type bytes hiredis reads, by what follows them: a line, a length and that many bytes, or a
# count and that many elements (maps and attributes: two per entry). hiredis refuses any other byte.
LINE_TYPES = frozenset(b"+-:,_#(")
BULK_TYPES = frozenset(b"$=")
AGGREGATE_TYPES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}
MIN_ELEMENT_BYTES = 3  # a type byte and CRLF ("+\r\n"): no element is smaller
# A length as hiredis accepts it (no sign but "-", no leading zero); 20 characters at most.
LENGTH = re.compile(rb"0|-?[1-9][0-9]{0,18}")
MAX_LENGTH_CHARS = 20


class ReplyTooLarge(InvalidResponse):
    """A reply passed the byte cap; the connection must not be reused."""


class ReplyScanner:
    """Follows the RESP structure of a stream, chunk by chunk ahead of hiredis, and refuses a bulk or
    aggregate header whose announced size cannot fit in its reply's cap.

    Its state is a few integers: ``owed`` is the number of elements the current reply still needs
    (every open aggregate's remaining elements: replies nest in prefix order, so no stack is needed).
    Each owed element takes at least 3 bytes, so a header is refused when the reply's bytes so far plus
    3 per owed element (plus a bulk's announced length) pass the cap. hiredis allocates a slot per
    announced element, hence at most ``max_reply_bytes / 3`` slots per reply, however deeply nested.
    Where the scanner and hiredis could disagree (a bad length, an unknown type byte), both refuse.
    """

    def __init__(self, max_reply_bytes: int):
        self.max_reply_bytes = max_reply_bytes
        self._offset = 0  # stream bytes scanned before the current chunk
        self._limit = 0  # stream offset the current reply must end by
        self._owed = 0
        self._type: int | None = None  # the type byte of the header line being read
        self._line = bytearray()  # the length of that header so far, if it has one
        self._cr = False  # the line so far ends with "\r" (its CRLF may be split across chunks)
        self._skip = 0  # bulk payload bytes, and its CRLF, still to pass
        self._header_start = 0  # stream offset of the current element's type byte
        self.refusal: InvalidResponse | None = None

    def scan(self, data: bytes) -> int:
        """Follow ``data``, the next chunk of the stream, and return how many of its bytes hiredis may
        be fed: all of them, or those before a header that cannot fit (``ReplyTooLarge``) or that
        hiredis would refuse (``InvalidResponse``); that refusal is then ``refusal``, and the replies
        before it stay readable."""
        pos, end = 0, len(data)
        try:
            while pos < end:
                if self._skip:
                    step = min(self._skip, end - pos)
                    self._skip -= step
                    pos += step
                elif self._type is None:
                    self._start(data[pos], self._offset + pos)
                    pos += 1
                else:
                    pos = self._header(data, pos)
        except InvalidResponse as exc:
            self.refusal = exc
            return max(0, self._header_start - self._offset)  # a header begun earlier allocates nothing yet
        self._offset += end
        return end

    def _start(self, byte: int, offset: int) -> None:
        self._header_start = offset
        if self._owed:
            self._owed -= 1
        else:  # a new reply
            self._limit = offset + self.max_reply_bytes
        if byte not in LINE_TYPES and byte not in BULK_TYPES and byte not in AGGREGATE_TYPES:
            raise InvalidResponse(f"Protocol error, got {chr(byte)!r} as reply type byte")
        self._type = byte
        self._line.clear()
        self._cr = False

    def _header(self, data: bytes, pos: int) -> int:
        """Read the header line from ``pos``; return where the scan goes on."""
        if self._cr and data[pos] == 0x0A:  # the CRLF split across chunks
            del self._line[-1:]
            self._finish(self._offset + pos + 1)
            return pos + 1
        crlf = data.find(b"\r\n", pos)
        stop = len(data) if crlf < 0 else crlf
        if self._type not in LINE_TYPES:
            if len(self._line) + stop - pos > MAX_LENGTH_CHARS + 1:  # +1: a "\r" kept in a split
                raise InvalidResponse("Protocol error: bad length")
            self._line += data[pos:stop]
        if crlf < 0:
            self._cr = data[-1] == 0x0D
            return stop
        self._finish(self._offset + crlf + 2)
        return crlf + 2

    def _finish(self, offset: int) -> None:
        """The header line ended at stream ``offset``: check what it announces."""
        kind, self._type = self._type, None
        if kind is None or kind in LINE_TYPES:
            return
        if not LENGTH.fullmatch(self._line):
            raise InvalidResponse("Protocol error: bad length")
        length = int(self._line)
        if length < 0:  # null (hiredis refuses below -1)
            return
        if kind in BULK_TYPES:
            self._skip = length + 2
        else:
            self._owed += length * AGGREGATE_TYPES[kind]
        if offset + self._skip + self._owed * MIN_ELEMENT_BYTES > self._limit:
            raise ReplyTooLarge(f"reply announced larger than {self.max_reply_bytes} bytes")


class BoundedHiredisParser(_AsyncHiredisParser):
    """The hiredis parser with a per-reply byte cap; ``bytes_read`` counts every byte read."""

    max_reply_bytes = MAX_REPLY_BYTES

    def __init__(self, socket_read_size: int):
        super().__init__(socket_read_size)
        self.bytes_read = 0
        self._reply_limit = self.max_reply_bytes
        self._scanner = ReplyScanner(self.max_reply_bytes)

    def on_connect(self, connection: Any) -> None:
        super().on_connect(connection)
        self._scanner = ReplyScanner(self.max_reply_bytes)

    def on_disconnect(self) -> None:
        super().on_disconnect()
        # The reader holds the partial reply (up to the cap); the parser may outlive the connection
        # for a long while (a traceback, a reference cycle), the reply must not.
        self._reader = None

    async def read_response(self, disable_decoding: bool = False, push_request: bool = False) -> Any:
        # Bytes already buffered belong to this or later replies of a pipeline; they were counted
        # against an earlier reply's cap, so only what this call reads counts against its own.
        self._reply_limit = self.bytes_read + self.max_reply_bytes
        return await super().read_response(disable_decoding=disable_decoding, push_request=push_request)

    async def read_from_socket(self) -> bool:
        if self._scanner.refusal is not None:  # hiredis has read every reply before it
            raise self._scanner.refusal
        room = self._reply_limit - self.bytes_read
        if room <= 0:
            raise ReplyTooLarge(f"reply larger than {self.max_reply_bytes} bytes")
        assert self._stream is not None
        buffer = await self._stream.read(min(self._read_size, room + 1))
        if not buffer or not isinstance(buffer, bytes) or self._reader is None:
            raise RedisConnectionError("Connection closed by server.") from None
        self.bytes_read += len(buffer)
        if len(buffer) > room:
            raise ReplyTooLarge(f"reply larger than {self.max_reply_bytes} bytes")
        safe = self._scanner.scan(buffer)
        if safe:
            self._reader.feed(buffer[:safe] if safe < len(buffer) else buffer)
        return True
