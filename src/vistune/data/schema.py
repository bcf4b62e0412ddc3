"""One training sample: validation and normalisation of LLaVA conversation rows.

A row (one element of a JSON array, or one line of a JSONL file) looks like::

    {"id": "000001", "image": "coco/0001.jpg",            # or a list of paths, or absent
     "video": "clips/a.mp4",                               # optional; never together with "image"
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A cat."}]}

Turns may also be written ``{"role": "user"|"assistant"|"system", "content": ...}`` where ``content`` is a
string or a Hugging Face style list of ``{"type": "text", "text": ...}`` / ``{"type": "image"}`` /
``{"type": "video"}`` items (flattened by :func:`flatten_content`). Other keys of a row are ignored.

Rules applied by :func:`parse_sample` (every violation raises :class:`SampleError` naming file, row and
field, so a loader can report it or count it as a skip):

* ``from`` is one of ``human | gpt | system``; ``role`` is one of ``user | assistant | system``. They map to
  the roles ``user``, ``assistant`` and ``system``.
* After an optional leading system turn, turns alternate user / assistant, starting with user. For training
  rows (``require_final_assistant=True``) the last turn is an assistant turn.
* Placeholders: an image sample must contain exactly as many ``<image>`` tags (over all turns) as it has
  images. A video sample has exactly one visual placeholder; LLaVA video data writes it ``<image>``, so in a
  video sample ``<image>`` is rewritten to ``<video>`` (the placeholder the processor expands into video
  tokens). Text-only samples must not contain placeholders, and assistant turns never do (the model cannot
  emit an image).
* A sample with media but no placeholder gets one ``"<image>\\n"`` per image (or ``"<video>\\n"``) at the
  start of its first user turn, as the reference code does.
* Single-media samples: if the one placeholder sits mid-text, it is moved to the front of its turn as
  ``"<image>\\n" + rest.strip()`` (reference behaviour; ``move_image_to_front=False`` keeps it in place).
  Multi-image samples always keep the user's placement, since interleaving carries meaning there.
* Relative media paths are joined to ``image_folder`` / ``video_folder`` when given; absolute paths and URLs
  (``scheme://...``) are kept as written. Without a folder, relative paths stay relative.
* ``id`` is a string or an integer; when missing it defaults to ``"<file stem>:<row>"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
PLACEHOLDERS = (IMAGE_TOKEN, VIDEO_TOKEN)

Role = Literal["system", "user", "assistant"]
Modality = Literal["image", "video", "text"]

_FROM_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
_ROLE_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


class SampleError(ValueError):
    """A row that cannot become a valid :class:`Sample`.

    ``file`` and ``row`` locate the row (``row`` is the 0-based element index of a JSON array, or the 0-based
    line index of a JSONL file, whose 1-based ``line`` is then also given); ``field`` names the offending
    field, e.g. ``"image[1]"`` or ``"conversations[3].value"`` (``"<row>"`` when the row as a whole is bad).
    """

    def __init__(self, message: str, *, file: str, row: int, field: str, line: int | None = None) -> None:
        self.file = str(file)
        self.row = row
        self.field = field
        self.line = line
        self.reason = message
        where = f"row {row}" if line is None else f"row {row} (line {line})"
        super().__init__(f"{self.file}: {where}: field {field!r}: {message}")

    def __reduce__(self):  # keep the keyword-only constructor picklable (DataLoader workers)
        return (_rebuild_sample_error, (self.reason, self.file, self.row, self.field, self.line))


def _rebuild_sample_error(message: str, file: str, row: int, field: str, line: int | None) -> SampleError:
    return SampleError(message, file=file, row=row, field=field, line=line)


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn. ``content`` is plain text that may contain ``<image>`` / ``<video>`` placeholders."""

    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class Sample:
    """A validated, normalised training sample.

    ``images`` are resolved paths in placeholder order; ``video`` is a resolved path or ``None`` (a sample
    never has both). ``source``/``row`` say where the sample came from, for error messages.
    """

    id: str
    images: list[str]
    video: str | None
    messages: list[Message]
    source: str
    row: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def modality(self) -> Modality:
        if self.video is not None:
            return "video"
        return "image" if self.images else "text"

    def to_chat(self) -> list[dict[str, str]]:
        """The conversation as Hugging Face style ``{"role", "content"}`` dicts (input of chat templates)."""
        return [m.to_dict() for m in self.messages]


def flatten_content(content: Any) -> str:
    """Turn a message content (a string, or a list of typed items) into text with placeholders.

    List items follow the Hugging Face LLaVA-OneVision chat template: every ``{"type": "image"}`` item becomes
    ``"<image>\\n"`` and every ``{"type": "video"}`` item ``"<video>\\n"``, all placed before the text; the
    ``{"type": "text", "text": ...}`` items follow, joined with ``"\\n"``. Raises ``ValueError`` on anything
    else (the caller adds the location).
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"expected a string or a list of typed items, got {type(content).__name__}")
    n_images = n_videos = 0
    texts: list[str] = []
    for k, item in enumerate(content):
        if not isinstance(item, Mapping):
            raise ValueError(f"item {k}: expected an object like {{'type': 'text', ...}}, got {item!r}")
        kind = item.get("type")
        if kind == "text":
            text = item.get("text")
            if not isinstance(text, str):
                raise ValueError(f"item {k}: a text item needs a string 'text', got {text!r}")
            texts.append(text)
        elif kind == "image":
            n_images += 1
        elif kind == "video":
            n_videos += 1
        else:
            raise ValueError(f"item {k}: unknown type {kind!r} (known: 'text', 'image', 'video')")
    return (IMAGE_TOKEN + "\n") * n_images + (VIDEO_TOKEN + "\n") * n_videos + "\n".join(texts)


def resolve_media_path(path: str, folder: str | os.PathLike[str] | None) -> str:
    """Join a relative media path to ``folder``; absolute paths, URLs and ``folder=None`` keep the path."""
    if folder is None or os.path.isabs(path) or "://" in path:
        return path
    return os.path.join(os.fspath(folder), path)


def parse_sample(
    raw: Any,
    *,
    source: str,
    row: int,
    line: int | None = None,
    image_folder: str | os.PathLike[str] | None = None,
    video_folder: str | os.PathLike[str] | None = None,
    move_image_to_front: bool = True,
    require_final_assistant: bool = True,
) -> Sample:
    """Validate one decoded row and normalise it into a :class:`Sample` (rules in the module docstring)."""

    def fail(fld: str, message: str) -> SampleError:
        return SampleError(message, file=source, row=row, field=fld, line=line)

    if not isinstance(raw, Mapping):
        raise fail("<row>", f"expected a JSON object, got {type(raw).__name__}")

    # -- id ------------------------------------------------------------------------------------------------
    rid = raw.get("id")
    if rid is None:
        sid = f"{Path(source).stem}:{row}"
    elif isinstance(rid, bool) or not isinstance(rid, str | int):
        raise fail("id", f"expected a string or an integer, got {rid!r}")
    else:
        sid = str(rid)

    # -- media ---------------------------------------------------------------------------------------------
    images: list[str] = []
    img = raw.get("image")
    if img is not None:
        items = [img] if isinstance(img, str) else img
        if not isinstance(items, list):
            raise fail("image", f"expected a path or a list of paths, got {type(img).__name__}")
        for k, p in enumerate(items):
            name = "image" if isinstance(img, str) else f"image[{k}]"
            if not isinstance(p, str) or not p.strip():
                raise fail(name, f"expected a non-empty path string, got {p!r}")
            images.append(resolve_media_path(p, image_folder))
    video: str | None = None
    vid = raw.get("video")
    if vid is not None:
        if not isinstance(vid, str) or not vid.strip():
            raise fail("video", f"expected a non-empty path string, got {vid!r}")
        if images:
            raise fail("video", "a sample has either 'image' or 'video', not both")
        video = resolve_media_path(vid, video_folder)

    # -- turns ---------------------------------------------------------------------------------------------
    conv = raw.get("conversations")
    if conv is None:
        raise fail("conversations", "missing")
    if not isinstance(conv, list) or not conv:
        raise fail("conversations", f"expected a non-empty list of turns, got {conv!r:.80}")
    roles: list[str] = []
    texts: list[str] = []
    text_fields: list[str] = []
    for t, turn in enumerate(conv):
        base = f"conversations[{t}]"
        if not isinstance(turn, Mapping):
            raise fail(base, f"expected an object with 'from'/'value' or 'role'/'content', got {turn!r:.80}")
        if "from" in turn:
            role_key, text_key, table = "from", "value", _FROM_ROLES
        elif "role" in turn:
            role_key, text_key, table = "role", "content", _ROLE_ROLES
        else:
            raise fail(base, "a turn needs 'from' (human|gpt|system) or 'role' (user|assistant|system)")
        who = turn[role_key]
        if who not in table:
            raise fail(f"{base}.{role_key}", f"unknown speaker {who!r} (expected one of {', '.join(table)})")
        if text_key not in turn:
            raise fail(f"{base}.{text_key}", "missing")
        try:
            text = flatten_content(turn[text_key])
        except ValueError as exc:
            raise fail(f"{base}.{text_key}", str(exc)) from None
        roles.append(table[who])
        texts.append(text)
        text_fields.append(f"{base}.{text_key}")

    _check_alternation(roles, conv, require_final_assistant, fail)

    # -- placeholders --------------------------------------------------------------------------------------
    if video is not None:
        # LLaVA video data marks the video with "<image>"; the processor expects "<video>".
        texts = [t.replace(IMAGE_TOKEN, VIDEO_TOKEN) for t in texts]
        tag, n_media = VIDEO_TOKEN, 1
    else:
        tag, n_media = IMAGE_TOKEN, len(images)
    other = VIDEO_TOKEN if tag == IMAGE_TOKEN else None
    for t, (role, text) in enumerate(zip(roles, texts, strict=True)):
        if other is not None and other in text:
            raise fail(text_fields[t], f"{other} placeholder but the sample has no video")
        if role == "assistant" and tag in text:
            raise fail(
                text_fields[t], f"{tag} placeholder in an assistant turn (only user/system turns show media)"
            )
    counts = [text.count(tag) for text in texts]
    n_tags = sum(counts)
    if n_tags == 0 and n_media > 0:
        first_user = roles.index("user")
        texts[first_user] = (tag + "\n") * n_media + texts[first_user]
        counts[first_user] = n_media
    elif n_tags != n_media:
        what = "video" if video is not None else f"{n_media} image(s)"
        raise fail("conversations", f"found {n_tags} {tag} placeholder(s) but the sample has {what}")
    if move_image_to_front and n_media == 1:
        t = next(k for k, c in enumerate(counts) if c == 1)
        if not texts[t].startswith(tag):
            rest = texts[t].replace(tag, "").strip()
            texts[t] = tag + "\n" + rest if rest else tag

    messages = [Message(role, text) for role, text in zip(roles, texts, strict=True)]  # type: ignore[arg-type]
    extra = {k: v for k, v in raw.items() if k not in ("id", "image", "video", "conversations")}
    return Sample(
        id=sid, images=images, video=video, messages=messages, source=str(source), row=row, extra=extra
    )


def _check_alternation(roles: Sequence[str], conv: Sequence[Any], final_assistant: bool, fail) -> None:
    """Optional system turn first, then user/assistant alternating from a user turn."""

    def role_field(t: int) -> str:
        return f"conversations[{t}].{'from' if 'from' in conv[t] else 'role'}"

    start = 1 if roles[0] == "system" else 0
    if start == len(roles):
        raise fail("conversations", "only a system turn; a sample needs at least one user turn")
    for t in range(start, len(roles)):
        expected = "user" if (t - start) % 2 == 0 else "assistant"
        if roles[t] != expected:
            got = "a system turn after the first turn" if roles[t] == "system" else f"a {roles[t]} turn"
            raise fail(
                role_field(t), f"expected a {expected} turn here (turns alternate user/assistant), got {got}"
            )
    if final_assistant and roles[-1] != "assistant":
        raise fail(role_field(len(roles) - 1), "a training sample must end with an assistant turn")
