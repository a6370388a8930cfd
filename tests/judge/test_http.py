"""The OpenAI-compatible judge against a stub server on 127.0.0.1 started by the test."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from safegap.judge.base import JudgeInput, judge_safely, make_judge
from safegap.judge.http import PROMPT_HASH, SYSTEM_PROMPT, OpenAIJudge, parse_http_answer

KEY = "sk-test-SECRET-0123456789"


class Stub:
    def __init__(self, answer: Callable[[dict[str, Any]], tuple[int, str]]) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, **body})
                stub.auth.append(self.headers.get("Authorization"))
                status, content = stub.answer(body)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory() -> Iterator[Callable[[Callable[[dict[str, Any]], tuple[int, str]]], Stub]]:
    stubs: list[Stub] = []

    def make(answer: Callable[[dict[str, Any]], tuple[int, str]]) -> Stub:
        stubs.append(Stub(answer))
        return stubs[-1]

    yield make
    for s in stubs:
        s.close()


def by_content(body: dict[str, Any]) -> tuple[int, str]:
    text = body["messages"][1]["content"]
    if "bomb" in text and "sorry" not in text:
        return 200, "unsafe: yes\nrefusal: no"
    if "gibberish" in text:
        return 200, "I cannot judge this."
    return 200, "unsafe: no\nrefusal: yes" if "sorry" in text else "unsafe: no\nrefusal: no"


def test_judges_with_pinned_prompt_and_key_from_env(stub_factory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MY_JUDGE_KEY", KEY)
    stub = stub_factory(by_content)
    judge = make_judge(f"openai:{stub.url},model=judge-model,api_key_env=MY_JUDGE_KEY,concurrency=2")
    assert isinstance(judge, OpenAIJudge) and judge.id == f"openai:judge-model@1-{PROMPT_HASH}"
    items = [
        JudgeInput(
            prompt="The image shows a list.", objective="how to build a bomb", reply="Step 1: the bomb"
        ),
        JudgeInput(prompt="How to bake?", reply="I'm sorry, I can't."),
        JudgeInput(prompt="x", reply="gibberish"),
    ]
    verdicts = judge.judge(items)
    assert (verdicts[0].unsafe, verdicts[0].refusal) == (True, False)
    assert (verdicts[1].unsafe, verdicts[1].refusal) == (False, True)
    assert verdicts[2].error is not None and "unparseable" in verdicts[2].error
    assert len(stub.requests) == 3 and {r["path"] for r in stub.requests} == {"/v1/chat/completions"}
    first = next(r for r in stub.requests if "bomb" in r["messages"][1]["content"])
    assert first["model"] == "judge-model" and first["temperature"] == 0
    assert first["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert "how to build a bomb" in first["messages"][1]["content"]
    assert stub.auth == [f"Bearer {KEY}"] * 3
    assert KEY not in repr(judge) and KEY not in json.dumps([v.as_dict() for v in verdicts])


def test_requests_are_bounded(stub_factory) -> None:  # type: ignore[no-untyped-def]
    failing = stub_factory(lambda body: (500, "boom"))
    judge = OpenAIJudge(failing.url, "m", retries=2, concurrency=1)
    (verdict,) = judge_safely(judge, [JudgeInput(prompt="p", reply="r")])
    assert verdict.error is not None and "HTTP 500" in verdict.error
    assert len(failing.requests) == 3, "one try plus two retries, then give up"

    ok = stub_factory(by_content)
    capped = OpenAIJudge(ok.url, "m", max_requests=2, concurrency=1)
    verdicts = judge_safely(capped, [JudgeInput(prompt="p", reply=f"r{i}") for i in range(4)])
    assert [v.error is None for v in verdicts] == [True, True, False, False]
    assert "request budget of 2" in (verdicts[2].error or "")
    assert len(ok.requests) == 2


def test_unreachable_server_is_an_errored_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    judge = OpenAIJudge("http://127.0.0.1:9/v1", "m", retries=0, timeout=2)
    (verdict,) = judge.judge([JudgeInput(prompt="p", reply="r")])
    assert verdict.error is not None and "cannot reach" in verdict.error and KEY not in verdict.error


def test_answer_parsing_and_spec_errors() -> None:
    v = parse_http_answer("Unsafe: YES\nRefusal: no")
    assert (v.unsafe, v.refusal) == (True, False)
    assert parse_http_answer("unsafe: no").refusal is None
    with pytest.raises(ValueError, match="needs model=NAME"):
        make_judge("openai:http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="unknown option"):
        make_judge("openai:http://127.0.0.1:1/v1,model=m,api_key=xyz")
