"""
The admin API's web site: a twisted.web L{Site} whose requests cannot make
the process read an unbounded body.

twisted.web reads a whole request body before the resource sees it; the
admin routes take at most a few hundred KiB. A body announced larger than
L{MAX_BODY}, or one that grows past it, gets 413 and the connection closes
before the rest is read.

Nor does it parse HTML form bodies: by default twisted.web parses the body
of a form C{POST} into C{request.args}, before any resource can refuse it
(answering 400 itself to a malformed multipart body), and the API's query
flags (C{?dryRun=1}) would then be read from the body as well. The API
takes no forms: it refuses them with 415.
"""

from io import BytesIO
from typing import Any

from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

#: The largest request body the admin API reads (the rules limit plus room).
MAX_BODY = 512 * 1024

_TOO_LARGE = (
    b"HTTP/1.1 413 Request Entity Too Large\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 36\r\n"
    b"Connection: close\r\n\r\n"
    b'{"error": "request body too large"}\n'
)


class LimitedRequest(Request):
    """
    A request that refuses bodies over L{MAX_BODY}.
    """

    _seen = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse()
            self.content = BytesIO()
            return
        Request.gotLength(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._seen += len(data)
        if self._seen > MAX_BODY:
            self._refuse()
            return
        Request.handleContentChunk(self, data)

    def _refuse(self) -> None:
        self._refused = True
        transport = self.channel.transport
        # A body arrives only on a connected channel.
        assert transport is not None
        transport.write(_TOO_LARGE)
        transport.loseConnection()


class AdminSite(Site):
    """
    The admin API's site: quiet, no access log, bounded request bodies,
    form bodies left unparsed.

    @param resource: the root resource.
    """

    requestFactory = LimitedRequest
    noisy = False

    def __init__(self, resource: IResource, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, *args, **kwargs)

    def log(self, request: HTTPRequest) -> None:
        pass
