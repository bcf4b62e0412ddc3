"""The processor: text with ``<image>`` placeholders + images -> model inputs.

It cuts pixels exactly as :func:`vistune.model.anyres.plan_image` says (the same plan the model executes) and
expands every ``<image>`` into as many image tokens as the plan predicts, so the two can never disagree.

Pixels match transformers' PIL-backend LLaVA processors bit for bit: Pillow bicubic resizing of 8-bit images,
black canvas padding for AnyRes crops, mean-colour padding for square views, ``x/255`` then ``(x-mean)/std``.

Batch layout (crop batching): ``pixel_values`` is ``(total_views, 3, S, S)`` — every view of every image in
the batch, base view first per image, then crops in raster order; no padding views. ``image_sizes`` holds each
image's original ``(height, width)`` and ``image_single_view`` whether it is a one-view image (a multi-image
sample, or AnyRes off).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vistune.config import VisualConfig
from vistune.data.images import load_image
from vistune.model.anyres import EncoderGeometry, ImagePlan, TokenCount, plan_image

IGNORE_INDEX = -100


class VisualState:
    """The visual representation shared by a model and its processor (one object, so they always agree)."""

    def __init__(self, visual: VisualConfig) -> None:
        self.visual = visual

    def set(self, **changes: Any) -> VisualConfig:
        self.visual = self.visual.override(**changes)
        return self.visual


@dataclass
class ProcessedImage:
    pixel_values: torch.Tensor  # (views, 3, S, S)
    plan: ImagePlan


class VistuneProcessor:
    def __init__(
        self,
        tokenizer: Any,
        geometry: EncoderGeometry,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        visual_state: VisualState,
        chat_template: str = "qwen_1_5",
        image_token: str = "<image>",
        video_token: str = "<video>",
        max_image_pixels: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.geometry = geometry
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)
        self.visual_state = visual_state
        self.chat_template = chat_template
        self.image_token = image_token
        self.video_token = video_token
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(image_token))
        self.max_image_pixels = max_image_pixels
        self._mean = np.asarray(self.image_mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(self.image_std, dtype=np.float32).reshape(3, 1, 1)

    # ------------------------------------------------------------------ visual settings
    @property
    def visual(self) -> VisualConfig:
        return self.visual_state.visual

    def plan(self, image_hw: Sequence[int], single_view: bool = False) -> ImagePlan:
        return plan_image(image_hw, self.visual, self.geometry, single_view)

    def count_tokens(self, image_hw: Sequence[int], single_view: bool = False) -> TokenCount:
        return self.plan(image_hw, single_view).tokens

    # ------------------------------------------------------------------ pixels
    def _normalize(self, im: Image.Image) -> np.ndarray:
        arr = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255)
        return (arr - self._mean) / self._std

    def _square_view(self, im: Image.Image, plan_mode: str) -> Image.Image:
        S = self.geometry.image_size
        if plan_mode == "pad":
            w, h = im.size
            m = max(w, h)
            if w != h:
                bg = tuple(int(x * 255) for x in self.image_mean)
                canvas = Image.new("RGB", (m, m), bg)
                canvas.paste(im, ((m - w) // 2, (m - h) // 2))
                im = canvas
        if im.size != (S, S):
            im = im.resize((S, S), resample=Image.Resampling.BICUBIC)
        return im

    def preprocess_image(
        self, image: Any, single_view: bool = False, source: str | None = None
    ) -> ProcessedImage:
        """One image -> its views as a tensor, and its plan."""
        im = load_image(image, max_pixels=self.max_image_pixels, source=source)
        w, h = im.size
        plan = self.plan((h, w), single_view)
        views: list[np.ndarray] = []
        if plan.single_view:
            views.append(self._normalize(self._square_view(im, plan.view_mode)))
        else:
            if plan.view_mode != "none":
                views.append(self._normalize(self._square_view(im, plan.view_mode)))
            # one resampling straight to the in-canvas size (resolution lifting only changes the plan)
            rh, rw = plan.resized_hw
            resized = im if im.size == (rw, rh) else im.resize((rw, rh), resample=Image.Resampling.BICUBIC)
            canvas = Image.new("RGB", (plan.canvas_hw[1], plan.canvas_hw[0]), (0, 0, 0))
            canvas.paste(resized, (plan.pad_top_left[1], plan.pad_top_left[0]))
            arr = self._normalize(canvas)
            for top, left, bottom, right in plan.crop_boxes:
                views.append(arr[:, top:bottom, left:right])
        return ProcessedImage(torch.from_numpy(np.ascontiguousarray(np.stack(views))), plan)

    # ------------------------------------------------------------------ tokens
    def expand_image_tokens(
        self, input_ids: Sequence[int], plans: Sequence[ImagePlan], labels: Sequence[int] | None = None
    ) -> tuple[list[int], list[int] | None]:
        """Replace the i-th ``<image>`` id by ``plans[i].num_tokens`` image ids (labels -100 there)."""
        out_ids: list[int] = []
        out_lab: list[int] | None = [] if labels is not None else None
        k = 0
        for j, tok in enumerate(input_ids):
            if tok == self.image_token_id:
                if k >= len(plans):
                    raise ValueError(
                        f"text has more {self.image_token} placeholders than images ({len(plans)})"
                    )
                n = plans[k].num_tokens
                out_ids.extend([self.image_token_id] * n)
                if out_lab is not None:
                    out_lab.extend([IGNORE_INDEX] * n)
                k += 1
            else:
                out_ids.append(int(tok))
                if out_lab is not None:
                    out_lab.append(int(labels[j]))  # type: ignore[index]
        if k != len(plans):
            raise ValueError(
                f"text has {k} {self.image_token} placeholders but {len(plans)} images were given"
            )
        return out_ids, out_lab

    def _bos(self) -> list[int]:
        ids = self.tokenizer("", add_special_tokens=True)["input_ids"]
        return [i for i in ids if i == getattr(self.tokenizer, "bos_token_id", None)]

    def __call__(
        self,
        text: str | Sequence[str],
        images: Any = None,
        *,
        return_tensors: str | None = "pt",
        padding: bool = True,
        padding_side: str = "left",
        add_special_tokens: bool = True,
    ) -> dict[str, Any]:
        """Tokenize ``text`` (one string or a batch) and process ``images``.

        ``images`` may be one image, a flat list (consumed in placeholder order across the batch) or a list of
        lists (one list per text). A text with more than one image is a multi-image sample: each of its images
        becomes a single square view (the OneVision/official rule).
        """
        texts = [text] if isinstance(text, str) else list(text)
        per_text = self._assign_images(texts, images)
        bos = self._bos() if add_special_tokens else []
        seqs: list[list[int]] = []
        views: list[torch.Tensor] = []
        sizes: list[tuple[int, int]] = []
        single: list[bool] = []
        for t, imgs in zip(texts, per_text, strict=True):
            multi = len(imgs) > 1
            processed = [self.preprocess_image(im, single_view=multi) for im in imgs]
            ids = bos + self.tokenizer(t, add_special_tokens=False)["input_ids"]
            ids, _ = self.expand_image_tokens(ids, [p.plan for p in processed])
            seqs.append(ids)
            for p in processed:
                views.append(p.pixel_values)
                sizes.append(p.plan.image_hw)
                single.append(p.plan.single_view)
        out: dict[str, Any] = {}
        if padding and len(seqs) > 1:
            longest = max(len(s) for s in seqs)
            pad_id = self.tokenizer.pad_token_id
            ids_p, mask_p = [], []
            for s in seqs:
                n = longest - len(s)
                if padding_side == "left":
                    ids_p.append([pad_id] * n + s)
                    mask_p.append([0] * n + [1] * len(s))
                else:
                    ids_p.append(s + [pad_id] * n)
                    mask_p.append([1] * len(s) + [0] * n)
            out["input_ids"], out["attention_mask"] = ids_p, mask_p
        else:
            out["input_ids"], out["attention_mask"] = seqs, [[1] * len(s) for s in seqs]
        if views:
            out["pixel_values"] = torch.cat(views, dim=0)
            out["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
            out["image_single_view"] = torch.tensor(single, dtype=torch.bool)
        if return_tensors == "pt":
            if len({len(s) for s in out["input_ids"]}) > 1:
                raise ValueError("sequences have different lengths; pass padding=True to return tensors")
            out["input_ids"] = torch.tensor(out["input_ids"], dtype=torch.long)
            out["attention_mask"] = torch.tensor(out["attention_mask"], dtype=torch.long)
        return out

    def _assign_images(self, texts: list[str], images: Any) -> list[list[Any]]:
        counts = [t.count(self.image_token) for t in texts]
        if images is None:
            images = []
        if not isinstance(images, list | tuple):
            images = [images]
        if images and isinstance(images[0], list | tuple):
            if len(images) != len(texts):
                raise ValueError(f"got {len(images)} image lists for {len(texts)} texts")
            per = [list(x) for x in images]
        else:
            flat = list(images)
            if len(flat) != sum(counts):
                raise ValueError(
                    f"the text(s) contain {sum(counts)} {self.image_token} placeholders but {len(flat)} images were given"
                )
            per, k = [], 0
            for c in counts:
                per.append(flat[k : k + c])
                k += c
        for i, (c, imgs) in enumerate(zip(counts, per, strict=True)):
            if c != len(imgs):
                raise ValueError(f"text {i} has {c} {self.image_token} placeholders but {len(imgs)} images")
        return per

    # ------------------------------------------------------------------ chat + decoding
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = False,
        template: str | None = None,
    ) -> str:
        from vistune.data.templates import get_template

        return get_template(template or self.chat_template).render(
            messages, add_generation_prompt=add_generation_prompt
        )

    def stop_strings(self, template: str | None = None) -> list[str]:
        from vistune.data.templates import get_template

        return list(get_template(template or self.chat_template).stop_strings)

    def batch_decode(self, ids: Any, skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens)

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "processor_class": "VistuneProcessor",
            "image_size": self.geometry.image_size,
            "patch_size": self.geometry.patch_size,
            "cls_tokens": self.geometry.cls_tokens,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "chat_template": self.chat_template,
            "image_token": self.image_token,
            "video_token": self.video_token,
        }

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        (path / "vistune_processor.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
