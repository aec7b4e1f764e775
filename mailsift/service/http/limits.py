"""A bound on the request head (request line and header fields), enforced while parsing.

uvicorn's httptools protocol keeps every header byte a client sends: a 2 MB header field
was read whole and answered 200. The application cannot help, since it sees the headers
only once they are all in memory; so the bound is counted here, as the parser hands the
bytes over, and an oversized head is answered 431 with the service's JSON error body,
then the connection is closed. Whatever else the parser refuses (bytes that are not
HTTP, a 0xFF in the request line) is a 400 with the same JSON body, not uvicorn's text.

The request line gets its own bound, 64 KiB: ``/v1/score`` carries the envelope in its
query, and clients refuse longer URLs anyway (httpx at 64 KiB; the parser itself gives up
near 80 KiB). The gateway client sends the recipients that fit
(:func:`mailsift.gateway.client.recipients_that_fit`): 1,000 of usual length, about 180
of the longest legal one.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mailsift.service.errors import error_body

__all__ = ["MAX_HEADER_BYTES", "MAX_URL_BYTES", "BoundedHttpToolsProtocol"]

MAX_URL_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024


class _HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head bounded (see the module doc)."""

    _url_bytes = 0
    _header_bytes = 0
    _too_large: str | None = None

    def on_message_begin(self) -> None:
        self._url_bytes = self._header_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > MAX_URL_BYTES:
            self._refuse(f"the request line exceeds {MAX_URL_BYTES} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(f"the header fields exceed {MAX_HEADER_BYTES} bytes")
        super().on_header(name, value)

    def _refuse(self, detail: str) -> None:
        self._too_large = detail
        # The parser turns this into its callback error; uvicorn then calls
        # send_400_response, which answers 431 instead (below).
        raise _HeadTooLarge(detail)

    def send_400_response(self, msg: str) -> None:
        """The parser's refusals answer with the service's JSON error body too: 431 for
        a head over the bound, 400 for anything that is not HTTP (a 0xFF byte in the
        request line, say)."""
        if self._too_large is None:
            status = b"400 Bad Request"
            body = error_body("bad_request", "the request is not valid HTTP/1.1")
        else:
            status = b"431 Request Header Fields Too Large"
            body = error_body("request_head_too_large", self._too_large)
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
