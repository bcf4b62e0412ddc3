"""Tests for the OpenAI-compatible judge client, against a real HTTP server on loopback."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vistune.eval.judge import (
    CACHE_FILE_NAME,
    JudgeCache,
    JudgeClient,
    JudgeConfigError,
    JudgeRequest,
    prompt_hash,
    request_hash,
)

Reply = tuple[int, dict[str, str], bytes]


def completion(content: str, model: str = "judge-served") -> Reply:
    body = {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def error(status: int, headers: dict[str, str] | None = None, text: str = "nope") -> Reply:
    return status, dict(headers or {}), json.dumps({"error": {"message": text}}).encode()


def user_text(body: dict[str, Any]) -> str:
    """Text of the last user message of a received request (string or multimodal content)."""
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


class FakeJudgeServer:
    """A small OpenAI-compatible chat-completions server on 127.0.0.1 (real HTTP, one thread per request).

    ``respond(body, n)`` gets the parsed request body and the 1-based request number and returns
    ``(status, headers, raw body)``; ``script`` replies are used first, in order. Every request body and its
    headers are recorded; ``max_in_flight`` is the highest number of requests handled at the same time.
    """

    def __init__(
        self,
        respond: Callable[[dict[str, Any], int], Reply] | None = None,
        script: list[Reply] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.respond = respond or (lambda body, n: completion("8 9\nfine"))
        self.script = list(script or [])
        self.delay_s = delay_s
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    body = json.loads(raw)
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    server.paths.append(self.path)
                    n = len(server.bodies)
                    reply = server.script.pop(0) if server.script else None
                try:
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    status, headers, payload = reply or server.respond(body, n)
                finally:
                    # the request counts as handled once its reply is ready: decrementing only after the write
                    # lets a loaded machine see the client's next request before this thread gets to run again
                    with server._lock:
                        server.in_flight -= 1
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def n_requests(self) -> int:
        with self._lock:
            return len(self.bodies)

    def __enter__(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def make_client(server: FakeJudgeServer, **kw: Any) -> JudgeClient:
    opts: dict[str, Any] = {"model": "judge-m", "api_key": "sk-test", "backoff_s": 0.001, "max_attempts": 3}
    opts.update(kw)
    return JudgeClient(server.url, **opts)


def req(text: str = "rate this", **kw: Any) -> JudgeRequest:
    return JudgeRequest(messages=[{"role": "user", "content": text}], **kw)


@pytest.fixture(autouse=True)
def _no_proxy_no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "VISTUNE_JUDGE_BASE_URL",
        "VISTUNE_JUDGE_MODEL",
        "VISTUNE_JUDGE_API_KEY",
        "VISTUNE_JUDGE_CACHE_DIR",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


# ------------------------------------------------------------------------------------------ success path


def test_success_records_model_prompt_hash_and_sends_openai_body() -> None:
    with FakeJudgeServer() as server:
        client = make_client(server)
        request = req(temperature=0.2, max_tokens=77, params={"top_p": 0.5})
        result = client.judge(request)
    assert result.ok and result.error is None
    assert result.content == "8 9\nfine"
    assert result.model == "judge-m"
    assert result.response_model == "judge-served"
    assert result.prompt_hash == prompt_hash(request.messages)
    assert result.request_hash == request_hash(request, "judge-m")
    assert result.attempts == 1 and not result.cached
    assert result.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert server.paths == ["/v1/chat/completions"]
    assert server.bodies[0] == {
        "model": "judge-m",
        "messages": [{"role": "user", "content": "rate this"}],
        "temperature": 0.2,
        "max_tokens": 77,
        "top_p": 0.5,
    }
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert result.as_dict()["prompt_hash"] == result.prompt_hash


def test_no_api_key_sends_no_authorization_header() -> None:
    with FakeJudgeServer() as server:
        JudgeClient(server.url, model="m").judge(req())
    assert "Authorization" not in server.headers[0]


def test_prompt_hash_depends_on_messages_only() -> None:
    a = req("one", temperature=0.0)
    b = req("one", temperature=0.7, max_tokens=5)
    c = req("two")
    assert prompt_hash(a.messages) == prompt_hash(b.messages) != prompt_hash(c.messages)
    assert request_hash(a, "m") != request_hash(b, "m")
    assert request_hash(a, "m") != request_hash(a, "other")


# ------------------------------------------------------------------------------------------ retries


def test_retries_after_500_and_429_then_succeeds_with_exponential_backoff() -> None:
    sleeps: list[float] = []
    script = [error(500), error(429), completion("7 7")]
    with FakeJudgeServer(script=script) as server:
        client = make_client(server, backoff_s=0.01, max_attempts=5, sleep=sleeps.append)
        result = client.judge(req())
    assert result.ok and result.content == "7 7"
    assert result.attempts == 3
    assert server.n_requests == 3
    assert sleeps == [0.01, 0.02]


def test_retry_after_header_raises_the_delay_up_to_the_cap() -> None:
    sleeps: list[float] = []
    script = [error(429, {"Retry-After": "0.5"}), error(503, {"Retry-After": "99"}), completion("1 2")]
    with FakeJudgeServer(script=script) as server:
        client = make_client(server, backoff_s=0.001, backoff_max_s=2.0, max_attempts=3, sleep=sleeps.append)
        assert client.judge(req()).ok
    assert sleeps == [0.5, 2.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_other_than_429_are_not_retried(status: int) -> None:
    sleeps: list[float] = []
    with FakeJudgeServer(script=[error(status, text="bad key")]) as server:
        result = make_client(server, max_attempts=5, sleep=sleeps.append).judge(req())
    assert not result.ok and result.content is None
    assert result.attempts == 1 and server.n_requests == 1 and sleeps == []
    assert f"HTTP {status}" in result.error and "bad key" in result.error


def test_permanent_server_error_gives_a_failed_result_after_all_attempts() -> None:
    with FakeJudgeServer(respond=lambda body, n: error(502, text="gateway")) as server:
        client = make_client(server, max_attempts=4)
        result = client.judge(req())
    assert not result.ok
    assert result.attempts == 4 and server.n_requests == 4
    assert "HTTP 502" in result.error and "after 4 attempt(s)" in result.error
    assert result.model == "judge-m" and result.prompt_hash == prompt_hash(req().messages)
    assert client.stats()["failures"] == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"<html>proxy error</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"model": "x"}).encode(), "no 'choices'"),
        (json.dumps({"choices": [{"message": {}}]}).encode(), "choices[0].message.content"),
        (json.dumps({"choices": [{"message": {"content": None}}]}).encode(), "choices[0].message.content"),
    ],
)
def test_malformed_reply_bodies_fail_with_a_reason(payload: bytes, reason: str) -> None:
    with FakeJudgeServer(respond=lambda body, n: (200, {}, payload)) as server:
        result = make_client(server, max_attempts=2).judge(req())
    assert not result.ok and reason in result.error
    assert server.n_requests == 2  # a malformed 2xx reply is treated as transient


def test_malformed_reply_then_good_reply_succeeds() -> None:
    with FakeJudgeServer(script=[(200, {}, b"not json"), completion("5 6")]) as server:
        result = make_client(server).judge(req())
    assert result.ok and result.content == "5 6" and result.attempts == 2


def test_connection_refused_is_retried_then_reported() -> None:
    with FakeJudgeServer() as server:
        url = server.url
    client = JudgeClient(url, model="m", backoff_s=0.0, max_attempts=2)
    result = client.judge(req())
    assert not result.ok and "connection error" in result.error and result.attempts == 2


def test_timeout_is_retried_then_reported() -> None:
    with FakeJudgeServer(delay_s=0.4) as server:
        client = make_client(server, timeout_s=0.1, max_attempts=2)
        result = client.judge(req())
    assert not result.ok and "timeout" in result.error and result.attempts == 2


# ------------------------------------------------------------------------------------------ cache


def test_cache_hit_on_rerun_sends_no_second_request(tmp_path: Path) -> None:
    request = req("same prompt")
    with FakeJudgeServer() as server:
        first = make_client(server, cache_dir=tmp_path).judge(request)
        rerun_client = make_client(server, cache_dir=tmp_path)
        second = rerun_client.judge(request)
        assert server.n_requests == 1
        changed = rerun_client.judge(req("same prompt", temperature=0.5))  # sampling params are in the key
        assert server.n_requests == 2
    assert first.ok and not first.cached
    assert second.ok and second.cached and second.attempts == 0
    assert second.content == first.content and second.response_model == first.response_model
    assert second.prompt_hash == first.prompt_hash and second.request_hash == first.request_hash
    assert changed.ok and not changed.cached
    assert rerun_client.stats()["cache_hits"] == 1


def test_failures_are_not_cached(tmp_path: Path) -> None:
    with FakeJudgeServer(script=[error(500), error(500)]) as server:
        failed = make_client(server, cache_dir=tmp_path, max_attempts=2).judge(req())
        retried = make_client(server, cache_dir=tmp_path).judge(req())
        assert server.n_requests == 3
    assert not failed.ok and retried.ok and not retried.cached


def test_corrupt_and_truncated_cache_lines_are_ignored(tmp_path: Path) -> None:
    request = req("cached")
    with FakeJudgeServer() as server:
        make_client(server, cache_dir=tmp_path).judge(request)
        path = tmp_path / CACHE_FILE_NAME
        good = path.read_text()
        path.write_text(
            "this is not json\n"
            + good
            + '{"key": 5, "content": "x"}\n[1,2]\n\xff\n'
            + '{"key": "trunc", "con'
        )
        client = make_client(server, cache_dir=tmp_path)
        assert client.cache is not None and client.cache.corrupt_lines == 5
        hit = client.judge(request)
        assert hit.cached and server.n_requests == 1
        other = client.judge(req("new prompt"))  # appended after the truncated line
        assert other.ok and server.n_requests == 2
    reopened = JudgeCache(tmp_path)
    assert len(reopened) == 2 and reopened.corrupt_lines == 5
    assert client.stats()["cache_corrupt_lines"] == 5


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISTUNE_JUDGE_CACHE_DIR", str(tmp_path / "jc"))
    with FakeJudgeServer() as server:
        make_client(server).judge(req())
        assert make_client(server).judge(req()).cached
    assert (tmp_path / "jc" / CACHE_FILE_NAME).is_file()


def test_concurrent_writers_keep_every_cache_line_intact(tmp_path: Path) -> None:
    # two clients on the same cache file, each with 8 threads, replies larger than a write buffer
    with FakeJudgeServer(respond=lambda body, n: completion("x" * 20000 + user_text(body))) as server:
        clients = [make_client(server, cache_dir=tmp_path, max_concurrency=8) for _ in range(2)]
        batches = [[req(f"c{c}-p{i}") for i in range(16)] for c in range(2)]
        threads = [
            threading.Thread(target=cl.judge_many, args=(b,)) for cl, b in zip(clients, batches, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    reopened = JudgeCache(tmp_path)
    assert len(reopened) == 32 and reopened.corrupt_lines == 0
    assert reopened.get(request_hash(req("c1-p5"), "judge-m"))["content"].endswith("c1-p5")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=8))
def test_cache_loading_never_fails_on_garbage(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / CACHE_FILE_NAME).write_bytes(b"\n".join(lines))
        cache = JudgeCache(d)
        cache.put("k", {"content": "v"})
        assert JudgeCache(d).get("k")["content"] == "v"


# ------------------------------------------------------------------------------------------ concurrency


def test_judge_many_preserves_order_and_honours_the_concurrency_limit() -> None:
    def echo(body: dict[str, Any], n: int) -> Reply:
        return completion("echo:" + user_text(body))

    with FakeJudgeServer(respond=echo, delay_s=0.05) as server:
        client = make_client(server, max_concurrency=3)
        results = client.judge_many([req(f"q{i}") for i in range(12)])
    assert [r.content for r in results] == [f"echo:q{i}" for i in range(12)]
    assert server.max_in_flight == 3


def test_concurrency_limit_also_bounds_direct_calls_from_many_threads() -> None:
    with FakeJudgeServer(delay_s=0.05) as server:
        client = make_client(server, max_concurrency=2)
        threads = [threading.Thread(target=client.judge, args=(req(f"t{i}"),)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert server.n_requests == 6 and server.max_in_flight == 2


def test_judge_many_sends_identical_requests_once_and_keeps_failures_in_place() -> None:
    def respond(body: dict[str, Any], n: int) -> Reply:
        return error(400) if user_text(body) == "bad" else completion("ok:" + user_text(body))

    with FakeJudgeServer(respond=respond) as server:
        results = make_client(server).judge_many([req("a"), req("bad"), req("a"), req("b")])
        assert server.n_requests == 3
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[0].content == results[2].content == "ok:a" and results[3].content == "ok:b"
    assert make_client(server).judge_many([]) == []


# ------------------------------------------------------------------------------------------ configuration


def test_environment_configuration_and_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-base.local/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    client = JudgeClient()
    assert client.endpoint == "http://openai-base.local/v1/chat/completions"
    assert client.model is None
    monkeypatch.setenv("VISTUNE_JUDGE_BASE_URL", "http://vistune.local:8000/v1/chat/completions")
    monkeypatch.setenv("VISTUNE_JUDGE_MODEL", "env-model")
    monkeypatch.setenv("VISTUNE_JUDGE_API_KEY", "sk-vistune")
    client = JudgeClient()
    assert client.endpoint == "http://vistune.local:8000/v1/chat/completions"  # full endpoint kept as is
    assert client.model == "env-model" and client._api_key == "sk-vistune"
    explicit = JudgeClient("https://other.example/api", model="arg-model", api_key="sk-arg")
    assert explicit.endpoint == "https://other.example/api/chat/completions"
    assert explicit.model == "arg-model" and explicit._api_key == "sk-arg"


def test_env_key_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    with FakeJudgeServer() as server:
        JudgeClient(server.url, model="m").judge(req())
    assert server.headers[0]["Authorization"] == "Bearer sk-from-env"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_url": "ftp://x/v1"}, "http(s) URL"),
        ({"base_url": "not a url"}, "http(s) URL"),
        ({"base_url": "http://x", "max_attempts": 0}, "max_attempts"),
        ({"base_url": "http://x", "max_concurrency": 0}, "max_concurrency"),
        ({"base_url": "http://x", "timeout_s": 0}, "timeout_s"),
        ({}, "no judge API key"),  # default endpoint is api.openai.com
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(JudgeConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JudgeClient(**kwargs)


def test_model_precedence_and_missing_model() -> None:
    with FakeJudgeServer() as server:
        no_model = JudgeClient(server.url)
        failed = no_model.judge(req())
        assert not failed.ok and "no judge model" in failed.error and server.n_requests == 0
        default_used = no_model.judge(req(model="task-default"))
        overridden = JudgeClient(server.url, model="configured").judge(req(model="task-default"))
    assert default_used.ok and default_used.model == "task-default"
    assert overridden.model == "configured"
    assert [b["model"] for b in server.bodies] == ["task-default", "configured"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"messages": []},
        {"messages": [{"content": "no role"}]},
        {"messages": ["text"]},
        {"messages": [{"role": "user", "content": "x"}], "params": {"model": "sneaky"}},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
    ],
)
def test_invalid_requests_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JudgeRequest(**kwargs)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=6), _json_values, max_size=5), st.randoms())
def test_hashes_ignore_dict_key_order(extra: dict[str, Any], rnd: Any) -> None:
    message = {"role": "user", "content": "c", **{f"x_{k}": v for k, v in extra.items()}}
    items = list(message.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    params = {f"p_{k}": v for k, v in extra.items()}
    shuffled_params = dict(reversed(list(params.items())))
    a = JudgeRequest(messages=[message], params=params)
    b = JudgeRequest(messages=[shuffled], params=shuffled_params)
    assert prompt_hash(a.messages) == prompt_hash(b.messages)
    assert request_hash(a, "m") == request_hash(b, "m")
