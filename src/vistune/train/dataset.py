"""Sequence assembly, skip accounting and batch collation for training.

One sample becomes one training sequence in four steps (:class:`SequenceBuilder`):

1. every image is loaded and cut by the processor (AnyRes), which fixes how many visual tokens it becomes;
   a sample with several images shows each as one view (the reference's multi-image rule);
2. the conversation is rendered by the stage's chat template and tokenized with its label mask
   (:func:`vistune.data.templates.tokenize_conversation`), counting each ``<image>`` at its expanded size;
3. if the expanded sequence is longer than ``max_length``, it is either dropped (``overflow="drop"``) or
   shortened to the leading exchanges that fit (``"truncate_turns"``) — a cut always falls between turns,
   never inside an image, and images whose placeholder was cut are dropped with it;
4. each ``<image>`` id is expanded into the plan's number of image ids (label -100).

**Bad data never kills a run.** A malformed row, a missing/corrupt/too-large image, an unsupported video,
an over-long sample that cannot be shortened, or a sample with no supervised token becomes a
:class:`Skipped` marker instead of an example. The collator drops markers from the batch and hands them to
the trainer, which counts them per reason in a :class:`SkipLog` (the first offenders are logged with file,
row and field). With ``strict=True`` the *bad-data* reasons (:data:`BAD_DATA_REASONS`) raise
:class:`BadSampleError` instead; samples that are merely too long or have nothing to learn are always
counted and skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vistune.data.images import ImageError
from vistune.data.schema import Sample, SampleError
from vistune.data.templates import IGNORE_INDEX, NoSupervisedTokens, TooLong, tokenize_conversation

log = logging.getLogger("vistune.train")

#: reasons that ``strict`` turns into errors (broken data, as opposed to data that is merely unusable)
BAD_DATA_REASONS = frozenset(
    {
        "malformed_row",
        "image_missing",
        "image_corrupt",
        "image_too_large",
        "image_unreadable",
        "video_unsupported",
    }
)


class BadSampleError(RuntimeError):
    """A bad sample under ``strict``; the message names file, row and field."""


@dataclass
class Skipped:
    """A sample that was not used, and why (``reason`` is a stable code, e.g. ``image_missing``)."""

    index: int
    reason: str
    message: str
    file: str | None = None
    row: int | None = None
    field: str | None = None
    sample_id: str | None = None

    def where(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(str(self.file))
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts) if parts else f"sample {self.index}"


class SkipSample(Exception):
    """Raised inside :class:`SequenceBuilder` to turn a sample into a :class:`Skipped` marker."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field


@dataclass
class Example:
    """One assembled training sequence (labels aligned with ``input_ids``; the shift happens in the model)."""

    index: int
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    image_sizes: list[tuple[int, int]]
    single_view: list[bool]
    num_visual_tokens: int
    modality: str
    truncated: bool = False


class SkipLog:
    """Counts skipped samples per reason and other data events; keeps the first offenders for the summary.

    Mergeable (``merge``) so that counts from several ranks or a resumed run add up.
    """

    def __init__(self, first_n: int = 10, logger: logging.Logger | None = log) -> None:
        self.first_n = first_n
        self.counts: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.first: list[dict[str, Any]] = []
        self._logger = logger

    def add(self, skip: Skipped) -> None:
        self.counts[skip.reason] += 1
        if len(self.first) < self.first_n:
            entry = {
                "reason": skip.reason,
                "where": skip.where(),
                "message": skip.message,
                "sample_id": skip.sample_id,
            }
            self.first.append(entry)
            if self._logger is not None:
                self._logger.warning("skipped sample (%s) at %s: %s", skip.reason, skip.where(), skip.message)
            if len(self.first) == self.first_n and self._logger is not None:
                self._logger.warning("further skipped samples are counted but not logged")

    def note(self, event: str, n: int = 1) -> None:
        self.events[event] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "events": dict(self.events), "first": list(self.first)}

    def merge(self, state: dict[str, Any]) -> None:
        self.counts.update(state.get("counts", {}))
        self.events.update(state.get("events", {}))
        for entry in state.get("first", []):
            if len(self.first) < self.first_n:
                self.first.append(entry)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts, self.events, self.first = Counter(), Counter(), []
        self.merge(state)


class SequenceBuilder:
    """Sample -> :class:`Example` (rules in the module docstring); raises :class:`SkipSample`."""

    def __init__(
        self,
        processor: Any,
        template: str,
        max_length: int,
        overflow: str = "truncate_turns",
        official_qwen_masking: bool = False,
    ) -> None:
        self.processor = processor
        self.template = template
        self.max_length = max_length
        self.overflow = overflow
        self.official_qwen_masking = official_qwen_masking

    def _tokenize(self, sample: Sample, lengths: list[int], max_length: int | None) -> tuple[list, list]:
        return tokenize_conversation(
            self.template,
            sample.to_chat(),
            self.processor.tokenizer,
            max_length=max_length,
            official_qwen_masking=self.official_qwen_masking,
            overflow="truncate_turns",
            placeholder_lengths=lengths,
        )

    def build(self, sample: Sample, index: int = -1) -> Example:
        if sample.video is not None:
            raise SkipSample(
                "video_unsupported", "video samples are not supported by the training processor yet", "video"
            )
        multi = len(sample.images) > 1
        processed = []
        for k, path in enumerate(sample.images):
            fld = "image" if len(sample.images) == 1 else f"image[{k}]"
            try:
                processed.append(self.processor.preprocess_image(path, single_view=multi, source=path))
            except ImageError as exc:
                raise SkipSample(f"image_{exc.reason}", str(exc), fld) from None
        plans = [p.plan for p in processed]
        lengths = [p.num_tokens for p in plans]
        try:
            ids, labels = self._tokenize(sample, lengths, None)
        except NoSupervisedTokens as exc:
            raise SkipSample("no_supervised_tokens", str(exc), "conversations") from None
        except ValueError as exc:  # bad roles/contents the schema let through, or missing placeholder ids
            raise SkipSample("malformed_row", str(exc), "conversations") from None
        full = len(ids) + sum(n - 1 for n in lengths)
        truncated = False
        if full > self.max_length:
            if self.overflow == "drop":
                raise SkipSample(
                    "too_long", f"{full} positions after image expansion > max_length={self.max_length}"
                )
            try:
                ids, labels = self._tokenize(sample, lengths, self.max_length)
            except (NoSupervisedTokens, TooLong) as exc:
                raise SkipSample("too_long", str(exc)) from None
            truncated = True
        image_id = self.processor.image_token_id
        kept = sum(1 for t in ids if t == image_id)
        ids, labels = self.processor.expand_image_tokens(ids, plans[:kept], labels)
        assert labels is not None
        if not any(lab != IGNORE_INDEX for lab in labels[1:]):
            raise SkipSample("no_supervised_tokens", "no label left to predict (only the first token)")
        pv = torch.cat([p.pixel_values for p in processed[:kept]]) if kept else None
        return Example(
            index=index,
            input_ids=ids,
            labels=labels,
            pixel_values=pv,
            image_sizes=[tuple(p.image_hw) for p in plans[:kept]],
            single_view=[bool(p.single_view) for p in plans[:kept]],
            num_visual_tokens=sum(lengths[:kept]),
            modality=sample.modality,
            truncated=truncated,
        )


class TrainDataset(torch.utils.data.Dataset):
    """``dataset[i]`` -> :class:`Example`, or :class:`Skipped` (or :class:`BadSampleError` when strict)."""

    def __init__(self, mixture: Any, builder: SequenceBuilder, strict: bool = False) -> None:
        self.mixture = mixture
        self.builder = builder
        self.strict = strict

    def __len__(self) -> int:
        return len(self.mixture)

    def __getitem__(self, i: int) -> Example | Skipped:
        try:
            sample = self.mixture[i]
        except SampleError as exc:
            skip = Skipped(int(i), "malformed_row", exc.reason, exc.file, exc.row, exc.field)
            return self._maybe_raise(skip)
        try:
            return self.builder.build(sample, int(i))
        except SkipSample as exc:
            skip = Skipped(int(i), exc.reason, exc.message, sample.source, sample.row, exc.field, sample.id)
            return self._maybe_raise(skip)

    def _maybe_raise(self, skip: Skipped) -> Skipped:
        if self.strict and skip.reason in BAD_DATA_REASONS:
            raise BadSampleError(f"bad sample ({skip.reason}) at {skip.where()}: {skip.message} [--strict]")
        return skip


@dataclass
class Batch:
    """A padded micro-batch. ``skips`` are the markers of samples dropped from it (counted by the trainer)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor
    position_ids: torch.Tensor | None = None  # packed batches: positions restart at every sample
    seq_lens: list[int] = field(default_factory=list)  # per-sample lengths (FLOPs use these, packed or not)
    pixel_values: torch.Tensor | None = None
    image_sizes: torch.Tensor | None = None
    image_single_view: torch.Tensor | None = None
    indices: list[int] = field(default_factory=list)
    skips: list[Skipped] = field(default_factory=list)
    num_truncated: int = 0
    num_visual_tokens: int = 0
    is_dummy: bool = False

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    @property
    def num_samples(self) -> int:
        return 0 if self.is_dummy else len(self.seq_lens)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return 0 if self.is_dummy else sum(self.seq_lens)

    @property
    def num_views(self) -> int:
        return 0 if self.pixel_values is None else int(self.pixel_values.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        """Supervised positions after the shift (what the model's loss is summed over)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def pin_memory(self) -> Batch:
        """Page-lock the tensors (called by the DataLoader when ``pin_memory=True``)."""
        for name in ("input_ids", "attention_mask", "labels", "position_ids", "pixel_values"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.pin_memory())
        return self

    def model_inputs(self, device: torch.device | str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "input_ids": self.input_ids.to(device, non_blocking=True),
            "attention_mask": None
            if self.attention_mask is None
            else self.attention_mask.to(device, non_blocking=True),
            "labels": self.labels.to(device, non_blocking=True),
        }
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids.to(device, non_blocking=True)
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values.to(device, non_blocking=True)
            out["image_sizes"] = self.image_sizes
            out["image_single_view"] = self.image_single_view
        return out


def dummy_batch(pad_token_id: int, skips: Sequence[Skipped] = ()) -> Batch:
    """A one-token batch with no label: lets a rank with no data still run forward/backward collectives."""
    ids = torch.full((1, 1), pad_token_id, dtype=torch.long)
    return Batch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=torch.full_like(ids, IGNORE_INDEX),
        skips=list(skips),
        is_dummy=True,
    )


class Collator:
    """Turns examples into a :class:`Batch`: right-padded rows, or — with ``packing`` — one packed row per
    micro-batch (positions restart per sample, no padding; see :mod:`vistune.data.packing`). Either way all
    views of all images go into one ``pixel_values`` and the loss covers the same supervised tokens.

    When every sample was skipped it returns a :func:`dummy_batch` (``is_dummy``) that carries the skips, so
    the trainer can count them and, under data parallelism, still join the step's collectives.
    """

    def __init__(
        self, pad_token_id: int, pad_to_multiple_of: int | None = None, packing: bool = False
    ) -> None:
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of or 1
        self.packing = packing

    def __call__(self, items: Sequence[Example | Skipped]) -> Batch:
        from vistune.data.packing import collate_packed, collate_padded

        examples = [x for x in items if isinstance(x, Example)]
        skips = [x for x in items if isinstance(x, Skipped)]
        if not examples:
            return dummy_batch(self.pad_token_id, skips)
        dicts = [
            {
                "input_ids": e.input_ids,
                "labels": e.labels,
                "pixel_values": e.pixel_values,
                "image_sizes": e.image_sizes,
                "image_single_view": e.single_view,
            }
            for e in examples
        ]
        if self.packing:
            d = collate_packed(dicts, pad_to_multiple_of=self.pad_to_multiple_of)
        else:
            d = collate_padded(dicts, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)
        return Batch(
            input_ids=d["input_ids"],
            attention_mask=d["attention_mask"],
            labels=d["labels"],
            position_ids=d.get("position_ids"),
            seq_lens=d["seq_lens"],
            pixel_values=d.get("pixel_values"),
            image_sizes=d.get("image_sizes"),
            image_single_view=d.get("image_single_view"),
            indices=[e.index for e in examples],
            skips=skips,
            num_truncated=sum(e.truncated for e in examples),
            num_visual_tokens=sum(e.num_visual_tokens for e in examples),
        )


__all__ = [
    "BAD_DATA_REASONS",
    "BadSampleError",
    "Batch",
    "Collator",
    "Example",
    "SequenceBuilder",
    "SkipLog",
    "SkipSample",
    "Skipped",
    "TrainDataset",
    "dummy_batch",
]
