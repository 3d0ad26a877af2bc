"""Records: every frame on a TCP connection, encrypted and authenticated.

::

    send:    frame pieces (small ones joined, large ones as they are) -> split in
             <= 1 MiB parts -> AES-256-GCM
             (key of this direction, nonce = counter) -> <u32 length><ciphertext + tag>
    receive: inbox bytes -> whole records -> decrypt and verify -> plaintext
             bytes for the ``FrameReader``

Each direction has its own key (derived in the handshake) and counter, so a
record cannot be replayed, reordered, dropped silently or moved to another
connection: a record that fails its tag ends the connection before a byte of
it is parsed.  Unix-socket connections (a node's own processes, in the
owner's private folder) skip this layer.
"""

from __future__ import annotations

import struct

from skate._private.wire.framing import FrameReader, ProtocolError

_LEN = struct.Struct("<I")
TAG_LEN = 16
MAX_RECORD = 1 << 20  # plaintext bytes per record
_SMALL = 64 << 10  # pieces below this are joined into shared records


class RecordCipher:
    """The two directions of one connection."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        # Imported here: a process whose connections all stay on Unix
        # sockets (a local cluster's) never loads OpenSSL (about 7 MB each).
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._decrypt_into = hasattr(AESGCM, "decrypt_into")  # cryptography >= 46
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self._send_n = 0
        self._recv_n = 0

    def seal(self, pieces: list) -> list:
        """The records carrying ``pieces`` (call under the connection's write lock).

        Small pieces (a frame's prefix and header) share records; a large
        buffer (a chunk of an object) is encrypted straight from its memory,
        1 MiB at a time, never copied into a joined frame first.
        """
        out: list = []
        small: list = []
        nsmall = 0
        for p in pieces:
            view = memoryview(p).cast("B")
            if view.nbytes < _SMALL:
                if nsmall + view.nbytes > MAX_RECORD:
                    self._seal_view(memoryview(b"".join(small)), out)
                    small, nsmall = [], 0
                small.append(view)
                nsmall += view.nbytes
                continue
            if small:
                self._seal_view(memoryview(b"".join(small)), out)
                small, nsmall = [], 0
            self._seal_view(view, out)
        if small or not out:
            self._seal_view(memoryview(b"".join(small)), out)
        return out

    def _seal_view(self, view: memoryview, out: list) -> None:
        for start in range(0, max(len(view), 1), MAX_RECORD):
            nonce = self._send_n.to_bytes(12, "little")
            self._send_n += 1
            ct = self._send.encrypt(nonce, view[start : start + MAX_RECORD], None)
            out.append(_LEN.pack(len(ct)))
            out.append(ct)

    def rewind(self, records: int) -> None:
        """Takes back the last ``records`` sealed, which never left this process.

        Only for records of which not one byte was sent (a send that timed
        out before it began): their nonces are used again for what is sent
        instead, and nobody ever saw the first ciphertext.
        """
        if not 0 <= records <= self._send_n:
            raise ValueError(f"cannot take back {records} records")
        self._send_n -= records

    def open(self, inbox: FrameReader, plain: FrameReader) -> None:
        """Moves every whole record from ``inbox`` into ``plain``, decrypted.

        Raises ``ProtocolError`` on a record that is too long or fails its tag.
        """
        from cryptography.exceptions import InvalidTag

        held = inbox.held()
        pos = 0
        try:
            while len(held) - pos >= _LEN.size:
                (n,) = _LEN.unpack_from(held, pos)
                if n > MAX_RECORD + TAG_LEN or n < TAG_LEN:
                    raise ProtocolError(f"a record of {n} bytes")
                if len(held) - pos - _LEN.size < n:
                    break
                start = pos + _LEN.size
                nonce = self._recv_n.to_bytes(12, "little")
                size = n - TAG_LEN
                try:
                    if self._decrypt_into:  # straight into the frame reader: one copy less
                        self._recv.decrypt_into(nonce, held[start : start + n], None, plain.space(size)[:size])
                    else:
                        data = self._recv.decrypt(nonce, held[start : start + n], None)
                        plain.space(size)[:size] = data
                except InvalidTag:
                    raise ProtocolError("a record failed authentication (altered or injected)") from None
                self._recv_n += 1
                plain.received(size)
                pos = start + n
        finally:
            inbox.consume(pos)
