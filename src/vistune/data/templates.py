"""Chat templates, supervision masks and exact-by-construction tokenization of conversations.

A template turns a conversation into text and says which characters the model learns to produce. Its
*segments* are text pieces flagged supervised or not; the rendered prompt is their concatenation, so the
label mask cannot drift from the text. The supervision rule is the same for every template: **loss only on
the assistant's reply and the end-of-turn marker that closes it**; headers, system and user turns (and any
separator after the end marker) are context. In the renderings below ``[[...]]`` marks supervised text::

    qwen_1_5 (alias chatml, qwen_2) -- system "You are a helpful assistant." is injected unless the
    conversation has its own system turn (Hugging Face's OneVision template has none: use
    ``with_system(None)`` for that)
        <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<image>\\nHi<|im_end|>\\n
        <|im_start|>assistant\\n[[Hello<|im_end|>]]\\n
    vicuna_v1 (alias v1) -- the reply's leading space is part of the reply, because generation starts right
    after "ASSISTANT:"
        <s>A chat between ... questions. USER: <image>\\nHi ASSISTANT:[[ Hello</s>]]USER: ...
    llama_3 (alias llava_llama_3)
        <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n...<|eot_id|>
        <|start_header_id|>user<|end_header_id|>\\n\\n<image>\\nHi<|eot_id|>
        <|start_header_id|>assistant<|end_header_id|>\\n\\n[[Hello<|eot_id|>]]
    plain (Stage-1 alignment) -- no roles and no system; a user turn keeps only its placeholders
        <image>[[A cat on a mat.\\n]]

:func:`tokenize_conversation` tokenizes the segments one run at a time (a run = adjacent segments of equal
supervision within one exchange), so every token's label comes from the segment it was cut from; nothing
is re-aligned after the fact. ``<image>``/``<video>`` placeholders are cut out before the tokenizer sees
the text and become exactly one token id each (label -100); the processor later expands each into its
visual tokens. Over-long conversations lose whole trailing exchanges (a user turn plus its reply), never a
placeholder, or are rejected (``overflow="drop"``). A conversation with nothing left to learn from raises
:class:`NoSupervisedTokens`, so the trainer can count and skip it.

For byte-level BPE tokenizers (Qwen, Llama-3, vistune's tiny one) the run boundaries coincide with
pre-tokenizer splits in all built-in templates, so the ids equal those of tokenizing the rendered text.
SentencePiece tokenizers that add a prefix space may tokenize a run start differently from the joined text;
the mask stays exact either way.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vistune.data.schema import IMAGE_TOKEN, PLACEHOLDERS, VIDEO_TOKEN, flatten_content

IGNORE_INDEX = -100

_PLACEHOLDER_RE = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS) + ")")

Overflow = Literal["truncate_turns", "drop"]


class TokenizationSkip(ValueError):
    """Base of the reasons a conversation yields no usable training example (the trainer counts these)."""


class NoSupervisedTokens(TokenizationSkip):
    """Every label is -100: no assistant turn, or all of them were truncated away."""


class TooLong(TokenizationSkip):
    """The conversation exceeds ``max_length`` and ``overflow="drop"`` was asked for."""

    def __init__(self, length: int, max_length: int) -> None:
        self.length = length
        self.max_length = max_length
        super().__init__(f"conversation is {length} tokens long, more than max_length={max_length}")

    def __reduce__(self):  # picklable across dataloader worker processes
        return (type(self), (self.length, self.max_length))


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of rendered text with its supervision flag and where it belongs.

    ``role`` is ``prefix`` (BOS), ``system``, ``user`` or ``assistant``; ``exchange`` numbers the
    user-turn + reply pairs from 0 (``-1`` for prefix and system); ``header`` marks the assistant's role
    markup (e.g. ``<|im_start|>assistant\\n``).
    """

    text: str
    supervised: bool
    role: str
    exchange: int
    header: bool = False


@dataclass(frozen=True)
class ChatTemplate(abc.ABC):
    """Base of the chat templates. Subclasses define the role markup; :meth:`annotated_segments` is shared.

    ``bos`` is written literally at the start (tokenizers are called with ``add_special_tokens=False``);
    ``end_of_turn`` closes every assistant reply and is supervised; ``stop_strings`` end generation.
    Templates are frozen dataclasses: ``dataclasses.replace(tpl, bos="<s>")`` or :meth:`with_system` derive
    variants.
    """

    name: str
    default_system: str | None = None
    bos: str = ""
    end_of_turn: str = ""
    stop_strings: tuple[str, ...] = ()
    #: family tag used by options that only make sense for one markup (``official_qwen_masking``)
    family: str = ""

    # -- markup, overridden per family ------------------------------------------------------------------
    @abc.abstractmethod
    def _system_block(self, text: str) -> str: ...

    @abc.abstractmethod
    def _user_block(self, text: str, previous: str) -> str:
        """``previous`` is the text of the segment just before (``""`` at the start)."""

    @abc.abstractmethod
    def _assistant_header(self) -> str: ...

    def _assistant_body(self, text: str) -> str:
        return text

    def _assistant_tail(self) -> str:
        return ""

    @property
    def generation_prompt(self) -> str:
        """The text appended by ``add_generation_prompt=True``: what the model continues from."""
        return self._assistant_header()

    # -- shared logic -----------------------------------------------------------------------------------
    def with_system(self, system: str | None) -> ChatTemplate:
        """A copy whose default system prompt is ``system`` (``None`` or ``""``: no system block)."""
        return dataclasses.replace(self, default_system=system)

    def annotated_segments(self, messages: Sequence[Any]) -> list[Segment]:
        """The conversation as :class:`Segment` pieces (empty pieces are left out).

        A system message (allowed only first) replaces ``default_system``; an empty system text means no
        system block. A new exchange starts at a user turn that follows a reply (or opens the conversation).
        """
        system, body = _split_system(messages)
        segs: list[Segment] = []

        def add(seg: Segment) -> None:
            if seg.text:
                segs.append(seg)

        add(Segment(self.bos, False, "prefix", -1))
        sys_text = self.default_system if system is None else system
        if sys_text:
            add(Segment(self._system_block(sys_text), False, "system", -1))
        exchange, prev_role = -1, None
        for role, text in body:
            previous = segs[-1].text if segs else ""
            if prev_role != "user":
                exchange += 1
            if role == "user":
                add(Segment(self._user_block(text, previous), False, "user", exchange))
            else:
                add(Segment(self._assistant_header(), False, "assistant", exchange, header=True))
                add(Segment(self._assistant_body(text) + self.end_of_turn, True, "assistant", exchange))
                add(Segment(self._assistant_tail(), False, "assistant", exchange))
            prev_role = role
        return segs

    def segments(self, messages: Sequence[Any]) -> list[tuple[str, bool]]:
        """``(text, supervised)`` pieces whose concatenation is :meth:`render`; adjacent equal flags merged."""
        out: list[tuple[str, bool]] = []
        for s in self.annotated_segments(messages):
            if out and out[-1][1] == s.supervised:
                out[-1] = (out[-1][0] + s.text, s.supervised)
            else:
                out.append((s.text, s.supervised))
        return out

    def render(self, messages: Sequence[Any], add_generation_prompt: bool = False) -> str:
        """The prompt text; ``add_generation_prompt`` appends the assistant header to generate a reply."""
        text = "".join(s.text for s in self.annotated_segments(messages))
        return text + self.generation_prompt if add_generation_prompt else text

    def mark_supervised(self, messages: Sequence[Any], open: str = "[[", close: str = "]]") -> str:
        """The rendered text with every supervised piece wrapped in ``open``/``close`` (for humans)."""
        return "".join(f"{open}{t}{close}" if sup else t for t, sup in self.segments(messages))


# --------------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatMLTemplate(ChatTemplate):
    """``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn (Qwen)."""

    end_of_turn: str = "<|im_end|>"
    stop_strings: tuple[str, ...] = ("<|im_end|>",)
    family: str = "chatml"

    def _system_block(self, text: str) -> str:
        return f"<|im_start|>system\n{text}<|im_end|>\n"

    def _user_block(self, text: str, previous: str) -> str:
        return f"<|im_start|>user\n{text}<|im_end|>\n"

    def _assistant_header(self) -> str:
        return "<|im_start|>assistant\n"

    def _assistant_tail(self) -> str:
        return "\n"


@dataclass(frozen=True)
class VicunaTemplate(ChatTemplate):
    """Vicuna v1 ("TWO" separator style): ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``."""

    bos: str = "<s>"
    end_of_turn: str = "</s>"
    stop_strings: tuple[str, ...] = ("</s>",)
    family: str = "vicuna"

    def _system_block(self, text: str) -> str:
        return text

    def _user_block(self, text: str, previous: str) -> str:
        # a space separates the turn from preceding system/user text; nothing after "</s>" or the BOS
        lead = " " if previous and previous != self.bos and not previous.endswith(self.end_of_turn) else ""
        return f"{lead}USER: {text}"

    def _assistant_header(self) -> str:
        return " ASSISTANT:"

    def _assistant_body(self, text: str) -> str:
        return " " + text


@dataclass(frozen=True)
class Llama3Template(ChatTemplate):
    """Llama-3 header style: ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``."""

    bos: str = "<|begin_of_text|>"
    end_of_turn: str = "<|eot_id|>"
    stop_strings: tuple[str, ...] = ("<|eot_id|>",)
    family: str = "llama_3"

    def _system_block(self, text: str) -> str:
        return f"<|start_header_id|>system<|end_header_id|>\n\n{text}<|eot_id|>"

    def _user_block(self, text: str, previous: str) -> str:
        return f"<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>"

    def _assistant_header(self) -> str:
        return "<|start_header_id|>assistant<|end_header_id|>\n\n"


@dataclass(frozen=True)
class PlainTemplate(ChatTemplate):
    """Stage-1 alignment: media then caption, no roles (``<image>`` + caption + ``"\\n"``).

    Each user turn contributes only its placeholders, in order (its words are dropped, as the reference
    replaces the question by the image token); each reply contributes its text plus ``"\\n"``, supervised.
    System turns are dropped. Text-only samples render as just their supervised replies.
    """

    end_of_turn: str = "\n"
    stop_strings: tuple[str, ...] = ("\n",)
    family: str = "plain"

    def _system_block(self, text: str) -> str:
        return ""

    def _user_block(self, text: str, previous: str) -> str:
        return "".join(_PLACEHOLDER_RE.findall(text))

    def _assistant_header(self) -> str:
        return ""


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, ChatTemplate] = {}


def register_template(template: ChatTemplate, aliases: Sequence[str] = ()) -> ChatTemplate:
    """Register ``template`` under its name and ``aliases`` (exact strings; re-registering is an error)."""
    for key in (template.name, *aliases):
        if key in _REGISTRY:
            raise ValueError(f"chat template {key!r} is already registered")
    for key in (template.name, *aliases):
        _REGISTRY[key] = template
    return template


def available_templates() -> list[str]:
    """All registered names and aliases, sorted."""
    return sorted(_REGISTRY)


def get_template(name: str | ChatTemplate) -> ChatTemplate:
    """The template registered under exactly ``name`` (a template instance is returned as is)."""
    if isinstance(name, ChatTemplate):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown chat template {name!r}; known templates: {', '.join(available_templates())}"
        ) from None


register_template(
    ChatMLTemplate("qwen_1_5", default_system="You are a helpful assistant."), ("chatml", "qwen_2")
)
register_template(
    VicunaTemplate(
        "vicuna_v1",
        default_system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    ),
    ("v1",),
)
register_template(
    Llama3Template(
        "llama_3",
        default_system="You are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language.",
    ),
    ("llava_llama_3",),
)
register_template(ChatMLTemplate("chatml_nosys", default_system=None), ("qwen_1_5_nosys",))
register_template(PlainTemplate("plain"))


# --------------------------------------------------------------------------------------------------------
# Message normalisation
# --------------------------------------------------------------------------------------------------------
def _split_system(messages: Sequence[Any]) -> tuple[str | None, list[tuple[str, str]]]:
    """Validate roles and flatten contents; return (system text or None, [(role, text), ...])."""
    out: list[tuple[str, str]] = []
    system: str | None = None
    for k, msg in enumerate(messages):
        if isinstance(msg, Mapping):
            role, content = msg.get("role"), msg.get("content")
        else:
            role, content = getattr(msg, "role", None), getattr(msg, "content", None)
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{k}]: role must be 'system', 'user' or 'assistant', got {role!r}")
        try:
            text = flatten_content(content)
        except ValueError as exc:
            raise ValueError(f"messages[{k}].content: {exc}") from None
        if role == "system":
            if k != 0:
                raise ValueError(f"messages[{k}]: a system message is only allowed first")
            system = text
        else:
            out.append((role, text))
    return system, out


# --------------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Run:
    text: str
    supervised: bool
    exchange: int


def _runs(segs: Sequence[Segment], supervise_headers: bool = False) -> list[_Run]:
    runs: list[_Run] = []
    for s in segs:
        sup = s.supervised or (supervise_headers and s.header)
        if runs and runs[-1].supervised == sup and runs[-1].exchange == s.exchange:
            runs[-1].text += s.text
        else:
            runs.append(_Run(s.text, sup, s.exchange))
    return runs


def placeholder_id(tokenizer: Any, token: str = IMAGE_TOKEN) -> int:
    """The single id of a placeholder token; a clear error if the tokenizer does not have it."""
    tid = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if tid is None or (
        isinstance(tid, int) and tid == unk and token != getattr(tokenizer, "unk_token", None)
    ):
        raise ValueError(
            f"the tokenizer has no {token!r} token; add it first, e.g. "
            f"tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})"
        )
    return int(tid)


def _encode_runs(tokenizer: Any, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Tokenize each text; return (ids per text, positions of placeholder ids per text)."""
    split = [_PLACEHOLDER_RE.split(t) for t in texts]
    plain = [p for parts in split for j, p in enumerate(parts) if j % 2 == 0 and p]
    encoded = iter(tokenizer(plain, add_special_tokens=False)["input_ids"] if plain else [])
    ph_ids: dict[str, int] = {}
    ids_out: list[list[int]] = []
    ph_out: list[list[int]] = []
    for parts in split:
        ids: list[int] = []
        phs: list[int] = []
        for j, p in enumerate(parts):
            if j % 2 == 0:
                if p:
                    ids.extend(next(encoded))
            else:
                if p not in ph_ids:
                    ph_ids[p] = placeholder_id(tokenizer, p)
                phs.append(len(ids))
                ids.append(ph_ids[p])
        ids_out.append(ids)
        ph_out.append(phs)
    return ids_out, ph_out


def _single_id(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"official_qwen_masking needs {text!r} to be one token, the tokenizer gives {ids}")
    return ids[0]


def tokenize_conversation(
    template: str | ChatTemplate,
    messages: Sequence[Any],
    tokenizer: Any,
    max_length: int | None = None,
    official_qwen_masking: bool = False,
    overflow: Overflow = "truncate_turns",
    placeholder_lengths: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Tokenize a training conversation into ``(input_ids, labels)`` with ``labels == -100`` off-target.

    * Labels are copied from the supervision flag of the segment each token was cut from; placeholder
      tokens are always -100.
    * ``official_qwen_masking`` (ChatML only) reproduces the reference's Qwen labels: the assistant header
      is supervised too, and every ``"\\n"``, ``<|im_start|>`` and ``<|im_end|>`` token is supervised
      wherever it occurs (user and system turns included).
    * Length is counted in positions after the processor expands placeholders: the k-th placeholder counts
      ``placeholder_lengths[k]`` (default 1, i.e. text tokens only). When it exceeds ``max_length``:
      ``overflow="truncate_turns"`` keeps the BOS/system prefix and as many leading exchanges as fit (the
      placeholders kept are therefore the first ones of the sample, in order), ``"drop"`` raises
      :class:`TooLong`.
    * Raises :class:`NoSupervisedTokens` when no supervised token is left (no reply, or not even the first
      exchange fits).
    """
    if overflow not in ("truncate_turns", "drop"):
        raise ValueError(f"overflow must be 'truncate_turns' or 'drop', got {overflow!r}")
    tpl = get_template(template)
    if official_qwen_masking and tpl.family != "chatml":
        raise ValueError(f"official_qwen_masking applies to ChatML (qwen) templates, not {tpl.name!r}")
    runs = _runs(tpl.annotated_segments(messages), supervise_headers=official_qwen_masking)
    ids_per_run, ph_per_run = _encode_runs(tokenizer, [r.text for r in runs])
    labels_per_run = []
    for run, ids, phs in zip(runs, ids_per_run, ph_per_run, strict=True):
        labels = list(ids) if run.supervised else [IGNORE_INDEX] * len(ids)
        for p in phs:
            labels[p] = IGNORE_INDEX
        labels_per_run.append(labels)
    if official_qwen_masking:
        keep = {
            _single_id(tokenizer, "\n"),
            _single_id(tokenizer, "<|im_start|>"),
            _single_id(tokenizer, "<|im_end|>"),
        }
        for ids, labels in zip(ids_per_run, labels_per_run, strict=True):
            for j, tok in enumerate(ids):
                if tok in keep:
                    labels[j] = tok
    if not any(lab != IGNORE_INDEX for labels in labels_per_run for lab in labels):
        raise NoSupervisedTokens(
            "no supervised tokens: the conversation has no assistant reply to learn from"
        )

    # cost of each run in expanded positions
    n_ph = sum(len(p) for p in ph_per_run)
    if placeholder_lengths is not None and len(placeholder_lengths) != n_ph:
        raise ValueError(
            f"placeholder_lengths has {len(placeholder_lengths)} entries for {n_ph} placeholders"
        )
    costs: list[int] = []
    k = 0
    for ids, phs in zip(ids_per_run, ph_per_run, strict=True):
        extra = 0
        for _ in phs:
            extra += (placeholder_lengths[k] - 1) if placeholder_lengths is not None else 0
            k += 1
        costs.append(len(ids) + extra)
    total = sum(costs)

    keep_runs = len(runs)
    if max_length is not None and total > max_length:
        if overflow == "drop":
            raise TooLong(total, max_length)
        used = sum(c for c, r in zip(costs, runs, strict=True) if r.exchange < 0)
        j = 0
        while j < len(runs) and runs[j].exchange < 0:
            j += 1
        keep_runs = j
        while j < len(runs):
            ex = runs[j].exchange
            end = j
            while end < len(runs) and runs[end].exchange == ex:
                end += 1
            cost = sum(costs[j:end])
            if used + cost > max_length:
                break
            used += cost
            keep_runs = j = end
        if not any(lab != IGNORE_INDEX for labels in labels_per_run[:keep_runs] for lab in labels):
            raise NoSupervisedTokens(
                f"no supervised tokens left after truncating to max_length={max_length} "
                f"(the conversation needs {total}; not even its first exchange fits)"
            )
    input_ids = [t for ids in ids_per_run[:keep_runs] for t in ids]
    labels = [t for lab in labels_per_run[:keep_runs] for t in lab]
    return input_ids, labels


def tokenize_prompt(template: str | ChatTemplate, messages: Sequence[Any], tokenizer: Any) -> list[int]:
    """Token ids of ``render(messages, add_generation_prompt=True)``, split exactly like training data.

    Use this for generation so the prompt's tokens match what the model saw in training.
    """
    tpl = get_template(template)
    runs = _runs(tpl.annotated_segments(messages))
    texts = [r.text for r in runs]
    if tpl.generation_prompt:
        texts.append(tpl.generation_prompt)
    ids_per_run, _ = _encode_runs(tokenizer, texts)
    return [t for ids in ids_per_run for t in ids]


def format_token_mask(
    input_ids: Sequence[int], labels: Sequence[int], tokenizer: Any, open: str = "[[", close: str = "]]"
) -> str:
    """Decode ``input_ids`` with each run of supervised tokens wrapped in ``open``/``close`` (debug view)."""
    if len(input_ids) != len(labels):
        raise ValueError(f"{len(input_ids)} input ids but {len(labels)} labels")
    out: list[str] = []
    j = 0
    while j < len(input_ids):
        sup = labels[j] != IGNORE_INDEX
        end = j
        while end < len(input_ids) and (labels[end] != IGNORE_INDEX) == sup:
            end += 1
        text = tokenizer.decode(list(input_ids[j:end]), skip_special_tokens=False)
        out.append(f"{open}{text}{close}" if sup else text)
        j = end
    return "".join(out)


__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN",
    "VIDEO_TOKEN",
    "ChatMLTemplate",
    "ChatTemplate",
    "Llama3Template",
    "NoSupervisedTokens",
    "PlainTemplate",
    "Segment",
    "TokenizationSkip",
    "TooLong",
    "VicunaTemplate",
    "available_templates",
    "format_token_mask",
    "get_template",
    "placeholder_id",
    "register_template",
    "tokenize_conversation",
    "tokenize_prompt",
]
