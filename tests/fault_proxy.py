"""An HTTP proxy in front of the emulator that misbehaves as load balancers and gateways do.

A rule looks at each EC2 call (its Action and parameters, and how many calls of that action
came before) and says what the proxy does: forward it untouched, answer in its place without
forwarding, or forward it and then answer something else (the call took effect; the client
never hears so).
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Answer:
    """What the client gets instead of EC2's answer."""

    status: int
    body: bytes = b""
    content_type: str = "text/html"
    # "before": the call reaches EC2 first; "instead": it never does; "hold": the call waits
    # (the client hears nothing) until the proxy is closed.
    forward: Literal["before", "instead", "hold"] = "before"


Rule = Callable[[str, dict[str, str], int], Answer | None]  # None: forward untouched

BAD_GATEWAY_HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


class FaultProxy:
    def __init__(self, upstream: str, rule: Rule) -> None:
        self.upstream = urlsplit(upstream)
        self.rule = rule
        self.calls: Counter[str] = Counter()
        self.mangled: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                """Quiet: the test reads the counters."""

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                params = dict(parse_qsl(body.decode("utf-8", "replace")))
                # The Query protocol (EC2) names the action in the body; JSON (SQS) in a header.
                target = self.headers.get("X-Amz-Target", "")
                action = params.get("Action") or target.rpartition(".")[2]
                with proxy._lock:
                    seen = proxy.calls[action]
                    proxy.calls[action] += 1
                answer = proxy.rule(action, params, seen)
                if answer is not None and answer.forward == "hold":
                    with proxy._lock:
                        proxy.mangled[action] += 1
                    proxy._closing.wait()
                    return
                if answer is None or answer.forward == "before":
                    status, headers, reply = proxy._forward(self.command, self.path, self, body)
                if answer is not None:
                    with proxy._lock:
                        proxy.mangled[action] += 1
                    status, reply = answer.status, answer.body
                    headers = [("Content-Type", answer.content_type)]
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _forward(
        self, method: str, path: str, request: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(
            self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=30
        )
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
