"""The real sender's process-wide TLS setting."""

from __future__ import annotations

import asyncio.sslproto

from worker.adapters.http.lovense import TLS_READ_BUFFER, AiohttpSender


def test_the_sender_shrinks_asyncios_tls_read_buffer() -> None:
    """Each pooled TLS connection reads through 32 KiB, not asyncio's zero-filled 256 KiB
    (about 300 KB a pooled LAN connection before, 90 KB after: the soak's creep)."""
    AiohttpSender(4, None)
    assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER == 32 * 1024
