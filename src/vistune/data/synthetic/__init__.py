"""The procedural synthetic world: deterministic stand-ins for the study's data and benchmarks.

Scenes of coloured shapes (colour / count / existence / spatial / multiple-choice / detailed captions),
documents (DocVQA-style reading and SynDOG-style transcription, legible in AnyRes crops but not in the
base view), bar charts (ChartQA-style), plus the Stage-1 / Stage-1.5 / Stage-2 training analogues. Start with
:func:`generate` for samples in memory or :func:`write_world` for LLaVA JSONL files, YAML mixtures and eval
splits on disk; :func:`render_gallery` draws a contact sheet.
"""

from vistune.data.synthetic.base import QA, WorldSample, content_split
from vistune.data.synthetic.captions import CaptionScore, Fact, parse_caption, score_caption
from vistune.data.synthetic.config import WorldConfig, WorldSizes
from vistune.data.synthetic.font import Legibility, legibility
from vistune.data.synthetic.world import (
    EVAL_TASKS,
    FAMILIES,
    Family,
    TaskSpec,
    baselines,
    generate,
    get_family,
    get_task_spec,
)
from vistune.data.synthetic.writer import render_gallery, write_world

__all__ = [
    "EVAL_TASKS",
    "FAMILIES",
    "QA",
    "CaptionScore",
    "Fact",
    "Family",
    "Legibility",
    "TaskSpec",
    "WorldConfig",
    "WorldSample",
    "WorldSizes",
    "baselines",
    "content_split",
    "generate",
    "get_family",
    "get_task_spec",
    "legibility",
    "parse_caption",
    "render_gallery",
    "score_caption",
    "write_world",
]
