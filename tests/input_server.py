"""A small OpenAI-compatible server on loopback for the input tests: ``GET /v1/models``
answers whatever body the test gives (a model list, ``{}``, HTML ...), ``POST
/v1/chat/completions`` answers a good reply (or ``chat_status``) and records every request
body, so a test can tell exactly what was sent, and to which server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["InputServer", "model_list"]


def model_list(*ids: str) -> bytes:
    return json.dumps({"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}).encode()


class InputServer:
    def __init__(self, models: bytes = model_list("only-1"), content_type: str = "application/json",
                 chat_status: int = 200) -> None:
        self.models, self.content_type, self.chat_status = models, content_type, chat_status
        self.requests: list[dict[str, Any]] = []
        self.model_requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.model_requests += 1
                self._answer(200, server.models, server.content_type)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests.append(body)
                if server.chat_status != 200:
                    self._answer(server.chat_status, b'{"error": {"message": "down"}}', "application/json")
                    return
                reply = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
                self._answer(200, json.dumps(reply).encode(), "application/json")

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "InputServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
