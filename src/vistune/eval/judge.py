"""LLM-judge client for OpenAI-compatible chat-completions endpoints (standard library only).

Judged benchmarks (LLaVA-in-the-Wild, Image/Video detailed caption, MathVista answer extraction) send one chat
request per sample to a judge model and parse its reply. This module owns everything about *talking* to the
judge; the tasks in :mod:`vistune.eval.tasks.judged` own the prompts and the parsing.

Rules
-----
* **Endpoint.** ``POST {base_url}/chat/completions`` with body ``{model, messages, temperature, max_tokens,
  **params}``; the reply's ``choices[0].message.content`` is the judgement and its ``model`` field is logged.
  A base URL that already ends in ``/chat/completions`` (lmms-eval's ``OPENAI_API_URL`` style) is used as is.
* **Configuration** comes from explicit arguments, else the environment, read when the client is built (never
  at import): base URL ``VISTUNE_JUDGE_BASE_URL`` → ``OPENAI_BASE_URL`` → ``https://api.openai.com/v1``;
  API key ``VISTUNE_JUDGE_API_KEY`` → ``OPENAI_API_KEY`` (optional: self-hosted servers often need none; it is
  sent as ``Authorization: Bearer``); model ``VISTUNE_JUDGE_MODEL``. The configured model wins over the
  per-request default (``JudgeRequest.model``, which tasks set to their blog-era judge), so one endpoint that
  serves one model can judge every task; with neither, the request fails as a configuration error.
* **Retries.** Connection errors, timeouts, HTTP 429 and HTTP 5xx, and 2xx replies whose body is not a valid
  chat completion (non-JSON, missing ``choices[0].message.content``) are retried up to ``max_attempts`` in
  total, sleeping ``backoff_s · 2^(k-1)`` (capped at ``backoff_max_s``) before attempt ``k+1``; a 429/503
  ``Retry-After`` header in seconds raises that sleep (same cap). Any other 4xx is final at once: retrying a
  bad key or a malformed request only burns quota.
* **Failures are values.** A request that never succeeds yields a :class:`JudgeResult` with ``ok=False`` and
  the reason in ``error``; it is never turned into a score. Tasks count and exclude such samples.
* **Concurrency.** At most ``max_concurrency`` HTTP requests are in flight per client, however it is called
  (a semaphore guards every attempt; sleeping between retries does not hold a slot). :meth:`JudgeClient.
  judge_many` runs a thread pool of that size, returns results in request order, and sends identical requests
  only once.
* **Cache.** With ``cache_dir`` (argument or ``VISTUNE_JUDGE_CACHE_DIR``), successful replies are appended to
  ``<cache_dir>/judge_cache.jsonl`` keyed by :func:`request_hash` — the SHA-256 of the canonical JSON of the
  full request body (model, messages, sampling parameters) — so a re-run costs nothing. Failures are never
  cached. Writes are serialised by a lock (safe for concurrent writers in one process); a corrupt or truncated
  line is skipped and counted, never fatal.
* **Provenance.** Every result records the judge model that was asked for, the model the server reported,
  and :func:`prompt_hash` — the SHA-256 of the canonical JSON of the messages (the exact judge prompt).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CACHE_FILE_NAME = "judge_cache.jsonl"
_ERROR_BODY_CHARS = 300


class JudgeConfigError(ValueError):
    """The client is misconfigured (bad URL, no model, missing key for api.openai.com, bad limits)."""


class JudgeFailedError(RuntimeError):
    """Raised by helpers that must return a value (e.g. MathVista extraction) when the judgement failed."""

    def __init__(self, result: JudgeResult, reason: str | None = None) -> None:
        self.result = result
        super().__init__(reason or result.error or "judge failed")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace, UTF-8 kept) used for every hash in this module."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    """Hash of the exact judge prompt (the chat messages), independent of model and sampling parameters."""
    return sha256_text(canonical_json(list(messages)))


@dataclass
class JudgeRequest:
    """One chat-completions call.

    ``model`` is the task's default judge; a client configured with a model overrides it. ``params`` holds
    any further body fields (``top_p``, ``n``, ``seed``, ...); they are part of the cache key.
    """

    messages: list[dict[str, Any]]
    temperature: float = 0.0
    max_tokens: int = 1024
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.messages, list) or not self.messages:
            raise ValueError("JudgeRequest.messages must be a non-empty list of chat messages")
        for i, msg in enumerate(self.messages):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                raise ValueError(f"JudgeRequest.messages[{i}] must be a dict with 'role' and 'content'")
        reserved = {"model", "messages", "temperature", "max_tokens"} & set(self.params)
        if reserved:
            raise ValueError(f"JudgeRequest.params must not set {sorted(reserved)}; use the fields instead")
        if self.max_tokens < 1:
            raise ValueError(f"JudgeRequest.max_tokens must be >= 1, got {self.max_tokens}")

    def body(self, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.params,
        }


def request_hash(request: JudgeRequest, model: str) -> str:
    """Cache key: hash of the full body that would be sent to ``model``."""
    return sha256_text(canonical_json(request.body(model)))


@dataclass
class JudgeResult:
    """Outcome of one judgement. ``ok=False`` means no usable reply; ``error`` says why."""

    ok: bool
    content: str | None
    model: str
    prompt_hash: str
    request_hash: str
    response_model: str | None = None
    error: str | None = None
    attempts: int = 0
    cached: bool = False
    usage: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "content": self.content,
            "model": self.model,
            "response_model": self.response_model,
            "prompt_hash": self.prompt_hash,
            "request_hash": self.request_hash,
            "error": self.error,
            "attempts": self.attempts,
            "cached": self.cached,
            "usage": self.usage,
        }


class JudgeLike(Protocol):
    """What judged tasks need from a judge (a :class:`JudgeClient` or a test double)."""

    def judge(self, request: JudgeRequest) -> JudgeResult: ...

    def judge_many(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]: ...


_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _path_lock(path: Path) -> threading.Lock:
    """One lock per cache file in this process, shared by every :class:`JudgeCache` opened on it."""
    key = str(path.resolve())
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(key, threading.Lock())


class JudgeCache:
    """Append-only JSONL cache of successful replies, keyed by :func:`request_hash`.

    The whole file is indexed when the cache is opened (later lines win). Each line is one JSON object with at
    least ``key`` and ``content`` (strings); anything else — invalid JSON, a line cut short by a crash, wrong
    types — is skipped and counted in :attr:`corrupt_lines`. Each append is one ``O_APPEND`` write made under a
    per-file lock shared by all caches opened on that file in the process, and starts on a fresh line even if
    the file ends with a truncated one.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        self.path = self.dir / CACHE_FILE_NAME
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self.corrupt_lines = 0
        self._needs_newline = False
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JudgeConfigError(f"judge cache dir {self.dir} cannot be created: {exc}") from exc
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        self._needs_newline = bool(raw) and not raw.endswith(b"\n")
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                entry = None
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("key"), str)
                or not isinstance(entry.get("content"), str)
            ):
                self.corrupt_lines += 1
                logger.warning("judge cache %s line %d is corrupt; ignored", self.path, lineno)
                continue
            self._entries[entry["key"]] = entry
        if self.corrupt_lines:
            logger.warning("judge cache %s: %d corrupt line(s) ignored", self.path, self.corrupt_lines)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        record = {**entry, "key": key}
        with self._lock:
            data = (("\n" if self._needs_newline else "") + canonical_json(record) + "\n").encode("utf-8")
            with _path_lock(self.path):
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            self._needs_newline = False
            self._entries[key] = record


class _AttemptError(Exception):
    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _endpoint(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise JudgeConfigError(f"judge base URL must be an http(s) URL, got {base_url!r}")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _parse_completion(raw: bytes) -> tuple[str, str | None, dict[str, Any] | None]:
    """Return (content, reported model, usage) from a chat-completions body, or raise a retryable error."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        snippet = raw[:_ERROR_BODY_CHARS].decode("utf-8", "replace")
        raise _AttemptError(f"reply body is not JSON ({exc}): {snippet!r}", retryable=True) from None
    if not isinstance(data, dict):
        raise _AttemptError(f"reply body is {type(data).__name__}, not a JSON object", retryable=True)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _AttemptError("reply has no 'choices' list", retryable=True)
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _AttemptError("reply has no string choices[0].message.content", retryable=True)
    model = data.get("model") if isinstance(data.get("model"), str) else None
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    return content, model, usage


class JudgeClient:
    """OpenAI-compatible chat-completions judge with retries, a concurrency limit and an on-disk cache.

    See the module docstring for the rules. ``sleep`` is injectable so tests can record backoff delays.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        max_attempts: int = 5,
        timeout_s: float = 60.0,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        max_concurrency: int = 8,
        cache_dir: str | Path | None = None,
        extra_headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise JudgeConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        if max_concurrency < 1:
            raise JudgeConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if timeout_s <= 0:
            raise JudgeConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if backoff_s < 0 or backoff_max_s < 0:
            raise JudgeConfigError("backoff_s and backoff_max_s must be >= 0")
        self.base_url = base_url or _env("VISTUNE_JUDGE_BASE_URL", "OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.endpoint = _endpoint(self.base_url)
        self.model = model or _env("VISTUNE_JUDGE_MODEL")
        self._api_key = api_key or _env("VISTUNE_JUDGE_API_KEY", "OPENAI_API_KEY")
        if not self._api_key and urllib.parse.urlparse(self.endpoint).hostname == "api.openai.com":
            raise JudgeConfigError(
                "no judge API key: pass api_key or set VISTUNE_JUDGE_API_KEY / OPENAI_API_KEY "
                "(or point VISTUNE_JUDGE_BASE_URL at a server that needs none)"
            )
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_concurrency = max_concurrency
        self._extra_headers = dict(extra_headers or {})
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._opener = urllib.request.build_opener()
        cache_dir = cache_dir if cache_dir is not None else _env("VISTUNE_JUDGE_CACHE_DIR")
        self.cache = JudgeCache(cache_dir) if cache_dir else None
        self._stats_lock = threading.Lock()
        self._stats = {"requests": 0, "http_attempts": 0, "cache_hits": 0, "failures": 0}

    def __repr__(self) -> str:
        return (
            f"JudgeClient(endpoint={self.endpoint!r}, model={self.model!r}, cache={self.cache is not None})"
        )

    def stats(self) -> dict[str, int]:
        """Counters since construction: judgements asked, HTTP attempts made, cache hits, failed results."""
        with self._stats_lock:
            out = dict(self._stats)
        out["cache_corrupt_lines"] = self.cache.corrupt_lines if self.cache else 0
        return out

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    def resolve_model(self, request: JudgeRequest) -> str | None:
        return self.model or request.model

    def judge(self, request: JudgeRequest) -> JudgeResult:
        """Run one judgement (cache → HTTP with retries). Never raises for transport or reply problems."""
        self._count("requests")
        p_hash = prompt_hash(request.messages)
        model = self.resolve_model(request)
        if not model:
            self._count("failures")
            return JudgeResult(
                ok=False,
                content=None,
                model="",
                prompt_hash=p_hash,
                request_hash="",
                error="no judge model configured (pass model=, set VISTUNE_JUDGE_MODEL, or set request.model)",
            )
        key = request_hash(request, model)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self._count("cache_hits")
                return JudgeResult(
                    ok=True,
                    content=hit["content"],
                    model=model,
                    prompt_hash=p_hash,
                    request_hash=key,
                    response_model=hit.get("response_model"),
                    attempts=0,
                    cached=True,
                    usage=hit.get("usage"),
                )
        payload = canonical_json(request.body(model)).encode("utf-8")
        last_error = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            try:
                content, response_model, usage = self._attempt(payload)
            except _AttemptError as exc:
                last_error = str(exc)
                if not exc.retryable or attempt == self.max_attempts:
                    self._count("failures")
                    logger.warning("judge request failed after %d attempt(s): %s", attempt, last_error)
                    return JudgeResult(
                        ok=False,
                        content=None,
                        model=model,
                        prompt_hash=p_hash,
                        request_hash=key,
                        error=f"{last_error} (after {attempt} attempt(s))",
                        attempts=attempt,
                    )
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                if exc.retry_after is not None:
                    delay = min(self.backoff_max_s, max(delay, exc.retry_after))
                logger.info("judge attempt %d failed (%s); retrying in %.3fs", attempt, last_error, delay)
                self._sleep(delay)
                continue
            if self.cache is not None:
                self.cache.put(
                    key,
                    {
                        "model": model,
                        "prompt_hash": p_hash,
                        "content": content,
                        "response_model": response_model,
                        "usage": usage,
                        "created": time.time(),
                    },
                )
            return JudgeResult(
                ok=True,
                content=content,
                model=model,
                prompt_hash=p_hash,
                request_hash=key,
                response_model=response_model,
                attempts=attempt,
                usage=usage,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def judge_many(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """Judge a batch concurrently (at most ``max_concurrency`` in flight); results follow input order.

        Identical requests (same :func:`request_hash`) are sent once and their result is shared.
        """
        requests = list(requests)
        if not requests:
            return []
        first_of: dict[str, int] = {}
        owner: list[int] = []
        for i, req in enumerate(requests):
            model = self.resolve_model(req)
            key = request_hash(req, model) if model else f"#unkeyed-{i}"
            owner.append(first_of.setdefault(key, i))
        unique = sorted(set(owner))
        workers = min(self.max_concurrency, len(unique))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vistune-judge") as pool:
            done = dict(zip(unique, pool.map(lambda i: self.judge(requests[i]), unique), strict=True))
        return [done[o] for o in owner]

    def _attempt(self, payload: bytes) -> tuple[str, str | None, dict[str, Any] | None]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self._extra_headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.endpoint, data=payload, headers=headers, method="POST")
        with self._slots:
            self._count("http_attempts")
            try:
                with self._opener.open(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                try:
                    body = exc.read()[:_ERROR_BODY_CHARS].decode("utf-8", "replace")
                except Exception:  # the error body itself may be unreadable
                    body = ""
                code = exc.code
                retryable = code == 429 or 500 <= code <= 599
                retry_after = _parse_retry_after(exc.headers.get("Retry-After")) if exc.headers else None
                raise _AttemptError(f"HTTP {code} {exc.reason}: {body!r}", retryable, retry_after) from None
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, TimeoutError):
                    raise _AttemptError(f"timeout after {self.timeout_s}s", retryable=True) from None
                raise _AttemptError(f"connection error: {reason}", retryable=True) from None
            except TimeoutError:
                raise _AttemptError(f"timeout after {self.timeout_s}s", retryable=True) from None
            except (OSError, http.client.HTTPException) as exc:
                raise _AttemptError(
                    f"connection error: {type(exc).__name__}: {exc}", retryable=True
                ) from None
        return _parse_completion(raw)
