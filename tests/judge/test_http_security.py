"""The HTTP judge keeps its credentials: no redirect is followed, no URL credential is shown."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from safegap.errors import redact, split_credentials
from safegap.judge.base import JudgeInput, make_judge

KEY = "sk-test-SECRET-0123456789"


class Server:
    """A stub on 127.0.0.1 whose POST handler is ``respond(handler)``; records Authorization."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.auth: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.auth.append(self.headers.get("Authorization"))
                respond(self)

            do_GET = do_POST  # noqa: N815 - a followed 303 would arrive as GET

            def log_message(self, *args: object) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], Server]]:
    made: list[Server] = []

    def make(respond: Callable[[BaseHTTPRequestHandler], None]) -> Server:
        made.append(Server(respond))
        return made[-1]

    yield make
    for s in made:
        s.close()


def answer(handler: BaseHTTPRequestHandler) -> None:
    body = b'{"choices": [{"message": {"content": "unsafe: no\\nrefusal: yes"}}]}'
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_errored_verdict_and_the_key_is_not_sent_on(
    servers, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:  # type: ignore[no-untyped-def]
    elsewhere = servers(answer)

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", f"{elsewhere.base}/steal/chat/completions")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    origin = servers(redirect)
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge = make_judge(f"openai:{origin.base}/v1,model=m,api_key_env=JUDGE_KEY,retries=0")
    (verdict,) = judge.judge([JudgeInput(prompt="p", reply="r")])
    assert elsewhere.auth == []  # nothing reached the other port, with or without the key
    assert origin.auth == [f"Bearer {KEY}"]
    assert verdict.unsafe is None and verdict.refusal is None
    assert verdict.error is not None
    assert f"HTTP {status} redirect" in verdict.error and f"{elsewhere.base}/steal" in verdict.error


def test_credentials_in_the_url_are_stripped_and_never_shown(servers) -> None:  # type: ignore[no-untyped-def]
    origin = servers(answer)
    host = origin.base.removeprefix("http://")
    judge = make_judge(f"openai:http://user:{KEY}@{host}/v1,model=m,retries=0")
    (verdict,) = judge.judge([JudgeInput(prompt="p", reply="r")])
    assert verdict.error is None and verdict.refusal is True
    assert KEY not in judge.endpoint and KEY not in judge.id  # type: ignore[attr-defined]
    assert origin.auth[0] is not None and origin.auth[0].startswith("Basic ")
    # an unreachable judge's error names the endpoint without the credentials
    dead = make_judge(f"openai:http://user:{KEY}@127.0.0.1:9/v1,model=m,retries=0,timeout=2")
    (failed,) = dead.judge([JudgeInput(prompt="p", reply="r")])
    assert failed.error is not None and "127.0.0.1:9" in failed.error and KEY not in failed.error


def test_redact_and_split_credentials() -> None:
    assert redact(f"openai:http://u:{KEY}@h:1/v1,model=m") == "openai:http://***@h:1/v1,model=m"
    assert redact("see https://example.org/a@b") == "see https://example.org/a@b"
    assert split_credentials(f"https://u:{KEY}@h/v1") == ("https://h/v1", f"u:{KEY}")
    assert split_credentials("http://h:8000/v1") == ("http://h:8000/v1", None)
