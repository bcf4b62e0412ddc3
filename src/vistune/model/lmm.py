"""The composed LMM: encode -> (resample) -> connect -> stitch/unpad/cap -> newline -> splice -> LLM.

The model never computes AnyRes geometry itself: for every image it asks
:func:`vistune.model.anyres.plan_image` (the same function the processor used) and executes the plan. A
mismatch between ``<image>`` tokens in ``input_ids`` and planned features is an error that names the images.

Model code is single-device; parallelism (DDP, FSDP2, activation checkpointing, compile) is applied from
outside by ``vistune.train.parallel``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistune.config import ConfigError, ModelConfig, VisualConfig, validate
from vistune.data.processor import VistuneProcessor, VisualState
from vistune.model.anyres import ImagePlan, check_visual_config, plan_image
from vistune.model.connector import build_connector
from vistune.model.language import build_llm, cache_kwarg, ensure_special_tokens, output_cache
from vistune.model.loss import chunked_cross_entropy, shifted_labels
from vistune.model.pooling import resample
from vistune.model.vision import VisionEncoder, build_vision_encoder

FORMAT_NAME = "vistune"
CONFIG_FILE = "vistune_config.json"
WEIGHTS_FILE = "model.safetensors"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ImageTokenMismatch(ValueError):
    """``<image>`` tokens in the text and visual features planned for the images disagree."""


@dataclass
class LMMOutput:
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    num_loss_tokens: torch.Tensor | None = None
    cache: Any = None
    num_visual_tokens: int = 0

    # transformers-style aliases
    @property
    def past_key_values(self) -> Any:
        return self.cache

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class VistuneModel(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        vision: VisionEncoder,
        connector: nn.Module,
        llm: nn.Module,
        tokenizer: Any,
        visual_state: VisualState,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision = vision
        self.connector = connector
        self.llm = llm
        self.tokenizer = tokenizer
        self.visual_state = visual_state
        hidden = int(llm.get_input_embeddings().embedding_dim)
        self.hidden_size = hidden
        self.image_newline = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(config.image_token))
        self.video_token_id = (
            int(tokenizer.convert_tokens_to_ids(config.video_token))
            if config.video_token is not None
            else None
        )
        #: run the vision tower on a dummy view when a batch has no image, so every rank of a sharded run
        #: executes the same collectives (set by the trainer under FSDP)
        self.always_run_vision = False

    # ------------------------------------------------------------------ structure
    @property
    def geometry(self):
        return self.vision.geometry

    @property
    def visual(self) -> VisualConfig:
        return self.visual_state.visual

    def set_visual(self, **changes: Any) -> VisualConfig:
        """Inference-time override of the visual representation (shared with the processor)."""
        new = self.visual.override(**changes)
        check_visual_config(new, self.geometry)
        self.visual_state.visual = new
        return new

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups by module (the unit of trainability and learning rates)."""
        return {
            "vision": list(self.vision.parameters()),
            "connector": list(self.connector.parameters()),
            "llm": list(self.llm.parameters()),
            "newline": [self.image_newline],
        }

    def unused_parameter_names(self) -> set[str]:
        """Parameters that can never receive a gradient: the encoder's final layernorm (vistune takes the
        selected layer's raw output, like LLaVA). The trainer keeps them frozen in every stage."""
        names = (n for n, _ in self.vision.model.named_parameters())
        return {f"vision.model.{n}" for n in names if "post_layernorm" in n.split(".")}

    def part_of(self, name: str) -> str:
        for prefix, part in (("vision.", "vision"), ("connector.", "connector"), ("llm.", "llm")):
            if name.startswith(prefix):
                return part
        if name == "image_newline":
            return "newline"
        raise KeyError(name)

    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    # ------------------------------------------------------------------ vision path
    def plan(
        self, image_sizes: torch.Tensor | Sequence, single_view: torch.Tensor | Sequence | None = None
    ) -> list[ImagePlan]:
        sizes = image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else list(image_sizes)
        if single_view is None:
            flags = [False] * len(sizes)
        else:
            flags = single_view.tolist() if isinstance(single_view, torch.Tensor) else list(single_view)
        return [
            plan_image(hw, self.visual, self.geometry, bool(f)) for hw, f in zip(sizes, flags, strict=True)
        ]

    def encode_images(self, pixel_values: torch.Tensor, plans: Sequence[ImagePlan]) -> list[torch.Tensor]:
        """All views of all images in one encoder call; returns each image's token sequence ``(n_i, D)``."""
        want = sum(p.num_views for p in plans)
        if pixel_values.shape[0] != want:
            raise ImageTokenMismatch(
                f"pixel_values holds {pixel_values.shape[0]} views but the plans of {len(plans)} images need {want}; "
                "were the images processed with different visual settings?"
            )
        feats = self.vision(pixel_values.to(self.device))
        cls = None
        if self.geometry.cls_tokens:
            cls, feats = feats[:, :1], feats[:, 1:]
        visual = self.visual
        after = visual.pool_position == "after"
        if after:
            feats = self.connector(feats)
            cls = self.connector(cls) if cls is not None else None
        s = self.geometry.tokens_per_side
        C = feats.shape[-1]
        maps = feats.transpose(1, 2).reshape(feats.shape[0], C, s, s)
        method = visual.pool_method
        newline = self.image_newline
        out: list[torch.Tensor] = []
        offset = 0
        for plan in plans:
            n = plan.num_views
            m = maps[offset : offset + n]
            c = cls[offset] if cls is not None else None
            offset += n
            v = plan.view_side
            if v != s:
                m = resample(m, (v, v), method)
            parts: list[torch.Tensor] = []
            has_base = plan.single_view or plan.view_mode != "none"
            if c is not None and has_base:
                parts.append(c if after else self.connector(c))
            if plan.single_view:
                tok = m[0].flatten(1).transpose(0, 1)
                parts.append(tok if after else self.connector(tok))
                if plan.newline:
                    parts.append(newline[None].to(parts[-1].dtype))
                out.append(torch.cat(parts))
                continue
            if has_base:
                base = m[0].flatten(1).transpose(0, 1)
                parts.append(base if after else self.connector(base))
                grid = m[1:]
            else:
                grid = m
            rows, cols = plan.grid
            g = grid.reshape(rows, cols, C, v, v).permute(2, 0, 3, 1, 4).reshape(C, rows * v, cols * v)
            top, bottom, left, right = plan.unpad
            g = g[:, top:bottom, left:right]
            if plan.final_hw != plan.unpadded_hw:
                g = resample(g[None], plan.final_hw, method)[0]
            if not after:
                g = self.connector(g.permute(1, 2, 0)).permute(2, 0, 1)
            if plan.newline:
                fh = g.shape[1]
                nl = newline.to(g.dtype)[:, None, None].expand(g.shape[0], fh, 1)
                g = torch.cat([g, nl], dim=2)
            parts.append(g.flatten(1).transpose(0, 1))
            out.append(torch.cat(parts))
        return out

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_single_view: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        emb_layer = self.llm.get_input_embeddings()
        is_image = input_ids == self.image_token_id
        n_tokens = int(is_image.sum())
        safe_ids = input_ids.masked_fill(is_image, 0) if n_tokens else input_ids
        emb = emb_layer(safe_ids)
        if pixel_values is None or image_sizes is None or len(image_sizes) == 0:
            if n_tokens:
                raise ImageTokenMismatch(
                    f"input_ids hold {n_tokens} image tokens but no pixel_values/image_sizes were given"
                )
            if self.always_run_vision and self.training:
                S = self.geometry.image_size
                dummy = torch.zeros(1, 3, S, S, device=emb.device, dtype=emb.dtype)
                emb = emb + 0.0 * self.connector(self.vision(dummy)).sum() + 0.0 * self.image_newline.sum()
            return emb, 0
        plans = self.plan(image_sizes, image_single_view)
        feats = self.encode_images(pixel_values, plans)
        flat = torch.cat(feats) if feats else emb.new_zeros(0, emb.shape[-1])
        if flat.shape[0] != n_tokens:
            per_sample = is_image.sum(dim=1).tolist()
            per_image = [p.num_tokens for p in plans]
            raise ImageTokenMismatch(
                f"the text holds {n_tokens} image tokens (per sample: {per_sample}) but the {len(plans)} images "
                f"of sizes {[list(p.image_hw) for p in plans]} produce {flat.shape[0]} features "
                f"(per image: {per_image}); were text and images processed with different visual settings "
                "(or was a sequence truncated through an image)?"
            )
        emb = emb.masked_scatter(is_image.unsqueeze(-1), flat.to(emb.dtype))
        return emb, n_tokens

    # ------------------------------------------------------------------ forward
    def _decoder(self) -> nn.Module:
        return self.llm.get_decoder()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_single_view: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: Any = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        return_logits: bool = True,
        logits_to_keep: int = 0,
        loss_chunk_size: int = 4096,
        **llm_kwargs: Any,
    ) -> LMMOutput:
        cache = cache if cache is not None else past_key_values
        n_vis = 0
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            input_ids = input_ids.to(self.device)
            inputs_embeds, n_vis = self.embed_inputs(input_ids, pixel_values, image_sizes, image_single_view)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if (
            position_ids is None
            and attention_mask is not None
            and cache is None
            and attention_mask.dim() == 2
        ):
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        decoder = self._decoder()
        kwargs = dict(llm_kwargs)
        if cache is not None:
            kwargs[cache_kwarg(decoder)] = cache
        if attention_mask is None and position_ids is not None and cache is None:
            attention_mask = self._packed_attention(position_ids, kwargs)
        out = decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        head = self.llm.get_output_embeddings()
        result = LMMOutput(cache=output_cache(out) if use_cache else None, num_visual_tokens=n_vis)
        if return_logits:
            h = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            result.logits = head(h)
        if labels is not None:
            labels = labels.to(self.device)
            targets = shifted_labels(labels)
            loss_sum, n = chunked_cross_entropy(
                hidden, head.weight, targets, getattr(head, "bias", None), loss_chunk_size
            )
            result.loss_sum = loss_sum
            result.num_loss_tokens = n
            result.loss = loss_sum / n.clamp_min(1)
        return result

    def _packed_attention(self, position_ids: torch.Tensor, kwargs: dict[str, Any]) -> Any:
        """For a packed row under ``vistune_sdpa``: per-sample boundaries as varlen kwargs and a pre-built
        (empty) mask mapping, so no dense block-diagonal mask is ever built. Otherwise ``None`` (transformers
        then derives the block-diagonal mask from the restarting positions)."""
        from vistune.model.attention import NAME, cu_seqlens_from_positions

        if getattr(self.llm.config, "_attn_implementation", None) != NAME:
            return None
        cu = cu_seqlens_from_positions(position_ids)
        if cu is None:
            return None
        longest = int((cu[1:] - cu[:-1]).max())
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        return {"full_attention": None, "sliding_attention": None}

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_single_view: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        cache_implementation: str = "dynamic",
        compile_decode: bool = False,
        **_: Any,
    ) -> torch.Tensor:
        """Batched decoding with a KV cache; returns only the new tokens ``(B, T_new)`` (pad after EOS).

        Left padding is expected for batches; positions come from the attention mask, so a left-padded
        batch decodes exactly like its samples one by one.

        ``cache_implementation="static"`` preallocates the cache for prompt + ``max_new_tokens`` and keeps every
        decode step's tensor shapes fixed (full-length attention mask, explicit cache positions), so the step
        can be compiled / CUDA-graph captured (``compile_decode=True``) without recompiling per step.
        """
        input_ids = input_ids.to(self.device)
        B = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device).long()
        eos = self._eos_ids(eos_token_id)
        pad = pad_token_id if pad_token_id is not None else (self.tokenizer.pad_token_id or 0)
        emb, _ = self.embed_inputs(input_ids, pixel_values, image_sizes, image_single_view)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        decoder = self._decoder()
        head = self.llm.get_output_embeddings()
        L = input_ids.shape[1]
        static = cache_implementation == "static"
        ckw = cache_kwarg(decoder)
        if static:
            from transformers import StaticCache

            cache = StaticCache(config=self.llm.config, max_cache_len=L + max_new_tokens)
            full_mask = torch.zeros(B, L + max_new_tokens, dtype=attention_mask.dtype, device=self.device)
            full_mask[:, :L] = attention_mask
            out = decoder(
                inputs_embeds=emb,
                attention_mask=full_mask[:, :L],
                position_ids=position_ids,
                use_cache=True,
                cache_position=torch.arange(L, device=self.device),
                **{ckw: cache},
            )
        else:
            out = decoder(
                inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids, use_cache=True
            )
            cache = output_cache(out)
        logits = head(out.last_hidden_state[:, -1]).float()

        def static_step(
            tok: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cpos: torch.Tensor
        ) -> torch.Tensor:
            o = decoder(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                cache_position=cpos,
                **{ckw: cache},
            )
            return head(o.last_hidden_state[:, -1]).float()

        step_fn = static_step
        if static and compile_decode:
            step_fn = torch.compile(static_step, mode="reduce-overhead", dynamic=False)
        finished = torch.zeros(B, dtype=torch.bool, device=self.device)
        eos_t = torch.tensor(sorted(eos), device=self.device, dtype=torch.long) if eos else None
        new_tokens: list[torch.Tensor] = []
        last_pos = position_ids[:, -1:]
        texts = [""] * B
        for step in range(max_new_tokens):
            tok = self._select(logits, do_sample, temperature, top_p, top_k, generator)
            tok = torch.where(finished, torch.full_like(tok, pad), tok)
            new_tokens.append(tok)
            if eos_t is not None:
                finished |= torch.isin(tok, eos_t)
            if stop_strings:
                for i in range(B):
                    if not finished[i]:
                        texts[i] = self.tokenizer.decode(
                            torch.stack(new_tokens, 1)[i], skip_special_tokens=False
                        )
                        if any(s in texts[i] for s in stop_strings):
                            finished[i] = True
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            last_pos = last_pos + 1
            if static:
                full_mask[:, L + step] = 1
                cpos = torch.full((1,), L + step, dtype=torch.long, device=self.device)
                logits = step_fn(tok, full_mask, last_pos, cpos)
                continue
            attention_mask = torch.cat(
                [attention_mask, torch.ones(B, 1, dtype=attention_mask.dtype, device=self.device)], 1
            )
            out = decoder(
                input_ids=tok[:, None],
                attention_mask=attention_mask,
                position_ids=last_pos,
                use_cache=True,
                **{ckw: cache},
            )
            cache = output_cache(out)
            logits = head(out.last_hidden_state[:, -1]).float()
        if not new_tokens:
            return torch.empty(B, 0, dtype=torch.long, device=self.device)
        return torch.stack(new_tokens, dim=1)

    def _eos_ids(self, eos_token_id: int | Sequence[int] | None) -> set[int]:
        if eos_token_id is None:
            ids = set()
            if self.tokenizer.eos_token_id is not None:
                ids.add(int(self.tokenizer.eos_token_id))
            gen_eos = getattr(getattr(self.llm, "generation_config", None), "eos_token_id", None)
            if isinstance(gen_eos, int):
                ids.add(gen_eos)
            elif isinstance(gen_eos, list):
                ids.update(int(x) for x in gen_eos)
            return ids
        if isinstance(eos_token_id, int):
            return {eos_token_id}
        return {int(x) for x in eos_token_id}

    @staticmethod
    def _select(
        logits: torch.Tensor,
        do_sample: bool,
        temperature: float,
        top_p: float,
        top_k: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if not do_sample or temperature <= 0:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k and top_k > 0:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1.0:
            sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
            probs = sorted_logits.softmax(-1)
            cum = probs.cumsum(-1)
            remove = cum - probs > top_p
            sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    # ------------------------------------------------------------------ persistence
    def resolved_config(self) -> ModelConfig:
        """The config with every backbone described by value, so a checkpoint rebuilds without the sources."""
        vision = self.config.vision.model_copy(
            update={
                "path": None,
                "preset": None,
                "hf_config": hf_config_dict(self.vision.model.config),
                "type": self.vision.type,
                "feature_layer": -1,
                "drop_last_layer": False,
                "keep_cls": self.vision.keep_cls,
                "image_mean": self.vision.image_mean,
                "image_std": self.vision.image_std,
            }
        )
        llm = self.config.llm.model_copy(
            update={
                "path": None,
                "preset": None,
                "hf_config": hf_config_dict(self.llm.config),
                "tokenizer": ".",
            }
        )
        # the connector's initial weights are in the checkpoint itself
        connector = self.config.connector.model_copy(update={"path": None})
        return self.config.model_copy(
            update={"vision": vision, "connector": connector, "llm": llm, "visual": self.visual}
        )

    def save_pretrained(
        self,
        path: str | Path,
        processor: VistuneProcessor | None = None,
        parts: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Atomically write a vistune checkpoint folder.

        ``parts`` limits the weights (a Stage-1 checkpoint may hold only ``["connector", "newline"]``);
        ``state_dict`` supplies the weights when the module itself is sharded (FSDP gathers them first).
        """
        from vistune.fsutil import atomic_dir

        path = Path(path)
        with atomic_dir(path) as tmp:
            write_model_folder(
                tmp,
                self,
                state_dict if state_dict is not None else self.state_dict(),
                processor,
                parts,
                metadata,
            )
        return path


ALL_PARTS = ("vision", "connector", "llm", "newline")


def write_model_folder(
    path: Path,
    model: VistuneModel,
    state_dict: dict[str, torch.Tensor],
    processor: VistuneProcessor | None,
    parts: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write a vistune model folder from a full state dict (the caller provides atomicity).

    Tensors that alias an earlier one (tied embeddings) are stored once; :func:`load_weights` restores the
    alias. Only the weights of ``parts`` are written (default: all).
    """
    from safetensors.torch import save_file

    parts = list(parts) if parts else list(ALL_PARTS)
    path.mkdir(parents=True, exist_ok=True)
    info = {
        "format": FORMAT_NAME,
        "config": model.resolved_config().model_dump(mode="json"),
        "parts": parts,
        "vision": model.vision.describe(),
        "metadata": metadata or {},
    }
    (path / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if model.part_of(k) not in parts:
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        if key in seen and v.numel() > 0:
            continue
        seen.add(key)
        out[k] = v.detach().contiguous().cpu()
    save_file(out, str(path / WEIGHTS_FILE))
    model.tokenizer.save_pretrained(str(path))
    if processor is not None:
        (path / "vistune_processor.json").write_text(json.dumps(processor.to_dict(), indent=2) + "\n")


def read_model_info(path: str | Path) -> dict[str, Any]:
    """The ``vistune_config.json`` of a model folder (format, config, parts)."""
    f = Path(path) / CONFIG_FILE
    if not f.is_file():
        raise ConfigError(f"{path}: not a vistune model folder (no {CONFIG_FILE})")
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{f}: invalid JSON ({exc})") from None
    if info.get("format") != FORMAT_NAME:
        raise ConfigError(f"{f}: not a vistune checkpoint (format={info.get('format')!r})")
    return info


def load_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a model folder's weights onto ``model`` (before any sharding); returns the parts loaded.

    Every weight of the parts the folder declares must be present (tied aliases excepted), and no weight may
    be unknown to the model or differ in shape; parts the folder does not hold keep the model's values.
    Transformers versions that nest vision towers differently are tolerated.
    """
    from safetensors.torch import load_file

    path = Path(path)
    info = read_model_info(path)
    parts = list(info.get("parts") or ALL_PARTS)
    own = model.state_dict()
    sd = _adapt_keys(load_file(str(path / WEIGHTS_FILE)), set(own))
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise ConfigError(
            f"{path / WEIGHTS_FILE}: weights the model does not have: {unexpected[:5]} "
            "(was it trained with a different model config?)"
        )
    wrong = [k for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ConfigError(
            f"{path / WEIGHTS_FILE}: {k} has shape {tuple(sd[k].shape)} but the model's is "
            f"{tuple(own[k].shape)} (different backbone config?)"
        )
    ptr_of = {k: v.data_ptr() for k, v in own.items()}
    present = {ptr_of[k] for k in sd}
    missing = [k for k in own if k not in sd and model.part_of(k) in parts and ptr_of[k] not in present]
    if missing:
        raise ConfigError(f"{path / WEIGHTS_FILE}: missing weights of parts {parts}: {missing[:5]}")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v)
    return parts


def hf_config_dict(cfg: Any) -> dict[str, Any]:
    d = cfg.to_diff_dict() if hasattr(cfg, "to_diff_dict") else dict(cfg)
    d["model_type"] = cfg.model_type
    for k in (
        "transformers_version",
        "architectures",
        "_name_or_path",
        "dtype",
        "torch_dtype",
        "_attn_implementation",
    ):
        d.pop(k, None)
    return d


# ---------------------------------------------------------------------- builders
def build_model(
    config: ModelConfig | dict[str, Any],
    *,
    base_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    load_weights: bool = True,
) -> tuple[VistuneModel, VistuneProcessor]:
    """Build ``(model, processor)`` from a model config (local folders, presets or HF config dicts)."""
    cfg = validate(ModelConfig, config, prefix="model.")
    tok_path = cfg.llm.tokenizer
    if tok_path is not None and base_dir is not None and not Path(tok_path).is_absolute():
        tok_path = str(Path(base_dir) / tok_path)
    vision = build_vision_encoder(
        cfg.vision,
        image_mean=cfg.vision.image_mean,
        image_std=cfg.vision.image_std,
        load_weights=load_weights,
    )
    try:
        check_visual_config(cfg.visual, vision.geometry)
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from None
    llm, tok = build_llm(cfg.llm, tokenizer_path=tok_path, load_weights=load_weights)
    ensure_special_tokens(llm, tok, [t for t in (cfg.image_token, cfg.video_token) if t is not None])
    connector = build_connector(
        cfg.connector, vision.hidden_size, int(llm.get_input_embeddings().embedding_dim)
    )
    state = VisualState(cfg.visual)
    model = VistuneModel(cfg, vision, connector, llm, tok, state)
    if cfg.connector.path is not None and load_weights:
        from vistune.model.connector import load_connector_weights

        cpath = Path(cfg.connector.path).expanduser()
        if not cpath.is_absolute() and base_dir is not None:
            cpath = Path(base_dir) / cpath
        load_connector_weights(model.connector, model.image_newline, cpath)
    processor = VistuneProcessor(
        tok,
        vision.geometry,
        vision.image_mean,
        vision.image_std,
        state,
        chat_template=cfg.chat_template,
        image_token=cfg.image_token,
        video_token=cfg.video_token,
    )
    torch_dtype = _DTYPES[dtype] if isinstance(dtype, str) else (dtype or _DTYPES[cfg.dtype])
    model.to(device=device, dtype=torch_dtype)
    model.eval()
    return model, processor


def _adapt_keys(sd: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Tolerate transformers versions that nest vision towers under ``vision_model.`` (or not)."""
    if set(sd) <= expected:
        return sd
    out = {}
    for k, v in sd.items():
        if k not in expected:
            alt = k.replace("vision.model.vision_model.", "vision.model.", 1)
            if alt == k and k.startswith("vision.model."):
                alt = "vision.model.vision_model." + k[len("vision.model.") :]
            if alt in expected:
                k = alt
        out[k] = v
    return out


def load_native(
    path: str | Path,
    *,
    visual_overrides: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    base: str | Path | None = None,
) -> tuple[VistuneModel, VistuneProcessor]:
    """Load a vistune checkpoint. A checkpoint holding only some parts (e.g. a connector-only Stage-1
    output) is loaded on top of ``base`` (a checkpoint, HF folder or preset with the same backbones)."""
    path = Path(path)
    info = read_model_info(path)
    parts = set(info.get("parts") or ALL_PARTS)
    if base is None:
        if parts != set(ALL_PARTS):
            raise ConfigError(
                f"{path} holds only the {sorted(parts)} weights (a partial, e.g. Stage-1, checkpoint); load it on "
                "top of its base model: load_pretrained(path, base=BASE)"
            )
        cfg = validate(ModelConfig, info["config"], prefix="model.", source=str(path / CONFIG_FILE))
        if visual_overrides:
            cfg = cfg.with_visual(**visual_overrides)
        model, processor = build_model(cfg, base_dir=path, device="cpu", dtype="float32")
    else:
        model, processor = load_pretrained(
            base, visual_overrides=visual_overrides, device="cpu", dtype="float32"
        )
    load_weights(model, path)
    cfg = model.config
    torch_dtype = _DTYPES[dtype] if isinstance(dtype, str) else (dtype or _DTYPES[cfg.dtype])
    model.to(device=device, dtype=torch_dtype)
    model.eval()
    return model, processor


def load_pretrained(
    path: str | Path,
    *,
    visual_overrides: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    base: str | Path | None = None,
) -> tuple[VistuneModel, VistuneProcessor]:
    """Load a vistune checkpoint, an HF ``llava_onevision``/``llava_next`` folder, or a model preset name.

    ``base`` is needed only for partial vistune checkpoints (see :func:`load_native`)."""
    from vistune.model.presets import is_model_preset, model_preset

    p = Path(str(path)).expanduser()
    if not p.exists() and is_model_preset(str(path)):
        cfg = model_preset(str(path))
        if visual_overrides:
            cfg = dict(cfg)
            cfg["visual"] = {**cfg.get("visual", {}), **visual_overrides}
        return build_model(cfg, device=device, dtype=dtype)
    if not p.is_dir():
        from vistune.model.presets import MODEL_PRESETS

        raise ConfigError(
            f"model: {path} is neither a folder nor a built-in preset ({', '.join(sorted(MODEL_PRESETS))})"
        )
    if (p / CONFIG_FILE).is_file():
        return load_native(p, visual_overrides=visual_overrides, device=device, dtype=dtype, base=base)
    if (p / "config.json").is_file():
        model_type = json.loads((p / "config.json").read_text()).get("model_type")
        if model_type in ("llava_onevision", "llava_next"):
            from vistune.model.interop.hf import import_hf

            return import_hf(p, visual_overrides=visual_overrides, device=device, dtype=dtype)
        raise ConfigError(
            f"{p / 'config.json'}: model_type {model_type!r} is not llava_onevision or llava_next"
        )
    raise ConfigError(f"{p}: no {CONFIG_FILE} (vistune) or config.json (transformers) found")


def model_geometry(path: str | Path):
    """``(EncoderGeometry, VisualConfig)`` of a checkpoint, HF folder or preset, without loading weights."""
    from vistune.model.presets import is_model_preset, model_preset

    p = Path(str(path)).expanduser()
    if not p.exists() and is_model_preset(str(path)):
        cfg = validate(ModelConfig, model_preset(str(path)), prefix="model.")
    elif (p / CONFIG_FILE).is_file():
        cfg = validate(ModelConfig, json.loads((p / CONFIG_FILE).read_text())["config"], prefix="model.")
    elif (p / "config.json").is_file():
        from vistune.model.interop.hf import hf_model_config

        cfg = hf_model_config(p)
    else:
        raise ConfigError(f"model: {path} is not a vistune checkpoint, an HF llava folder or a preset")
    return model_geometry_from_config(cfg)


def model_geometry_from_config(cfg: ModelConfig):
    """``(EncoderGeometry, VisualConfig)`` of a model config, reading at most the encoder's config.json."""
    from vistune.model.anyres import EncoderGeometry
    from vistune.model.presets import vision_preset

    v = cfg.vision
    if v.preset is not None:
        d = vision_preset(v.preset)
    elif v.hf_config is not None:
        d = v.hf_config
    else:
        f = Path(v.path).expanduser() / "config.json"
        if not f.is_file():
            raise ConfigError(f"vision.path: {f} not found")
        d = json.loads(f.read_text())
        d = d.get("vision_config", d)
    keep_cls = 1 if (v.keep_cls and str(d.get("model_type", "")).startswith("clip")) else 0
    return EncoderGeometry(int(d["image_size"]), int(d["patch_size"]), keep_cls), cfg.visual
