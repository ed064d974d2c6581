"""A Redis reply parser that refuses replies larger than a byte cap.

redis-py's parsers read until a reply is complete: a server that announces a 2 GB bulk string (or an
endless status line, or an array of millions of elements) makes the client buffer all of it. This
parser counts the bytes it reads for each reply and fails the read with ``ReplyTooLarge`` (a protocol
error) once they pass ``max_reply_bytes``; it never reads more than one byte past the cap, so a hostile
target costs at most the cap. (In a pipeline, bytes that arrived in the same read as the previous reply
count against that one: a reply may pass the cap by one socket read.) redis-py drops the connection on
any error from the parser; the next probe builds a new one.
"""

from __future__ import annotations

from typing import Any

from redis._parsers.hiredis import _AsyncHiredisParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse

MAX_REPLY_BYTES = 1 << 20  # 1 MiB: INFO is ~6 KB, a queue pipeline's replies are smaller still


class ReplyTooLarge(InvalidResponse):
    """A reply passed the byte cap; the connection must not be reused."""


class BoundedHiredisParser(_AsyncHiredisParser):
    """The hiredis parser with a per-reply byte cap; ``bytes_read`` counts every byte read."""

    max_reply_bytes = MAX_REPLY_BYTES

    def __init__(self, socket_read_size: int):
        super().__init__(socket_read_size)
        self.bytes_read = 0
        self._reply_limit = self.max_reply_bytes

    async def read_response(self, disable_decoding: bool = False, push_request: bool = False) -> Any:
        # Bytes already buffered belong to this or later replies of a pipeline; they were counted
        # against an earlier reply's cap, so only what this call reads counts against its own.
        self._reply_limit = self.bytes_read + self.max_reply_bytes
        return await super().read_response(disable_decoding=disable_decoding, push_request=push_request)

    async def read_from_socket(self) -> bool:
        room = self._reply_limit - self.bytes_read
        if room <= 0:
            raise ReplyTooLarge(f"reply larger than {self.max_reply_bytes} bytes")
        assert self._stream is not None
        buffer = await self._stream.read(min(self._read_size, room + 1))
        if not buffer or not isinstance(buffer, bytes):
            raise RedisConnectionError("Connection closed by server.") from None
        self.bytes_read += len(buffer)
        if len(buffer) > room:
            raise ReplyTooLarge(f"reply larger than {self.max_reply_bytes} bytes")
        self._reader.feed(buffer)
        return True
