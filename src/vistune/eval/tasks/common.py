"""Shared machinery for the built-in benchmark tasks.

Three jobs live here:

* **Finding the local copy of a published dataset.** A task names the Hugging Face dataset it reads
  (``DatasetSource``: repo id, config, split). The folder is taken from the task's environment variable
  (``VISTUNE_DATA_<TASK>``, e.g. ``VISTUNE_DATA_DOCVQA_VAL``) when set, otherwise from ``data_dir`` — tried as
  ``data_dir/<task name>``, ``data_dir/<owner>/<name>``, ``data_dir/<name>``, ``data_dir/<owner>__<name>``,
  and the hub cache layout ``data_dir/datasets--<owner>--<name>/snapshots/<rev>`` (folder names match
  case-insensitively). Inside it, a config sub-folder is used when present
  (``DocVQA/``, ``ScienceQA-IMG/``), and the split's files are those named after the split (``test-00000-of-
  00002.parquet``, ``val.jsonl``, ``annot_testmini.json``) at the top, under ``data/`` or under a folder
  named after the split. Parquet is read when ``pyarrow`` is importable; JSON/JSONL always.
* **Reading rows without holding images in memory.** Rows are read eagerly *without* their image columns,
  so every malformed row is reported before any generation starts; images are fetched lazily, one parquet
  row group at a time, when ``Doc.load_images()`` is called.
* **Turning any stored image form into an RGB PIL image**: parquet ``{"bytes", "path"}`` structs, raw or
  base64 bytes, data URIs, and paths relative to the JSON file or the dataset folder.

Every problem raises :class:`DatasetFormatError` naming the file, the row and the field.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import io
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vistune.eval.task import Doc, Task

__all__ = [
    "BenchmarkTask",
    "DatasetFormatError",
    "DatasetSource",
    "LazyImage",
    "Row",
    "decode_image",
    "find_split_files",
    "iter_rows",
    "letter_options",
    "locate_dataset",
    "pyarrow_available",
]

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


class DatasetFormatError(ValueError):
    """A dataset file, row or field does not have the published shape."""


def pyarrow_available() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class DatasetSource:
    """Which published dataset a task reads: HF repo id, config (also the hub sub-folder) and split."""

    repo: str
    split: str
    config: str | None = None
    #: the split is spread over one sub-folder per config that must all be read (MMMU's per-subject layout)
    per_config_folders: bool = False

    @property
    def owner(self) -> str:
        return self.repo.partition("/")[0] if "/" in self.repo else ""

    @property
    def name(self) -> str:
        return self.repo.rpartition("/")[2]


# ----------------------------------------------------------------------------------------------------------
# Locating the dataset folder and the split files
# ----------------------------------------------------------------------------------------------------------


def _child_ci(parent: Path, name: str) -> Path | None:
    """``parent/name`` if it is a folder, matching the name case-insensitively."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if not parent.is_dir():
        return None
    lowered = name.lower()
    for child in sorted(parent.iterdir()):
        if child.is_dir() and child.name.lower() == lowered:
            return child
    return None


def _split_tokens(stem: str) -> list[str]:
    return [t for t in re.split(r"[-_.]", stem) if t]


def find_split_files(root: Path, source: DatasetSource) -> list[Path]:
    """The data files of ``source.split`` under ``root`` (see the module docstring for the layouts).

    Returns files of a single format, in name order: parquet when any exist and ``pyarrow`` is importable,
    else JSONL, else JSON.
    Raises :class:`DatasetFormatError` when only parquet exists and ``pyarrow`` is missing.
    """
    base = root
    if source.config:
        base = _child_ci(root, source.config) or root
    split = source.split
    search_dirs = [base, base / "data", base / split, base / "data" / split]
    if source.per_config_folders and base.is_dir():
        # e.g. MMMU/MMMU: one folder per subject, each holding that subject's split files.
        for child in sorted(base.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and child.name not in ("data", split):
                search_dirs += [child, child / "data"]
    found: list[Path] = []
    seen: set[Path] = set()
    for directory in search_dirs:
        if not directory.is_dir():
            continue
        in_split_dir = directory.name == split and directory != base
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix not in DATA_SUFFIXES:
                continue
            if (in_split_dir or split in _split_tokens(path.stem)) and path not in seen:
                seen.add(path)
                found.append(path)
    parquet = [p for p in found if p.suffix == ".parquet"]
    jsonl = [p for p in found if p.suffix == ".jsonl"]
    plain_json = [p for p in found if p.suffix == ".json"]
    if parquet and pyarrow_available():
        return parquet
    if jsonl or plain_json:  # one format only, so a split exported twice is not read twice
        return jsonl or plain_json
    if parquet:
        raise DatasetFormatError(
            f"{base}: split {split!r} is stored as parquet ({parquet[0].name}, ...) but pyarrow is not installed; "
            "install it (pip install pyarrow) or convert the split to JSONL"
        )
    return []


def locate_dataset(
    task_name: str, source: DatasetSource, data_dir: str | Path | None, env_var: str | None
) -> Path:
    """The folder holding ``source``'s split for ``task_name`` (see the module docstring for the search order)."""
    if env_var and os.environ.get(env_var):
        path = Path(os.environ[env_var]).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"task {task_name!r}: {env_var}={path} is not a folder")
        if not find_split_files(path, source):
            raise FileNotFoundError(
                f"task {task_name!r}: {env_var}={path} holds no {source.split!r} split files "
                f"(expected e.g. {source.split}-00000-of-00001.parquet or {source.split}.jsonl)"
            )
        return path
    if data_dir is None:
        hint = f" or set {env_var}" if env_var else ""
        raise FileNotFoundError(f"task {task_name!r}: no data folder given; pass data_dir{hint}")
    data_dir = Path(data_dir).expanduser()
    candidates: list[Path] = []
    for name in (task_name, source.repo, source.name, f"{source.owner}__{source.name}"):
        if not name or name.startswith("__"):
            continue
        parent, leaf = data_dir, name
        if "/" in name:
            owner_dir = _child_ci(data_dir, source.owner)
            if owner_dir is None:
                continue
            parent, leaf = owner_dir, source.name
        hit = _child_ci(parent, leaf)
        if hit is not None and hit not in candidates:
            candidates.append(hit)
    cache = _child_ci(data_dir, f"datasets--{source.owner}--{source.name}")
    if cache is not None and (cache / "snapshots").is_dir():
        snapshots = sorted(
            (p for p in (cache / "snapshots").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
        )
        candidates.extend(reversed(snapshots))
    # ``data_dir`` itself is deliberately not a candidate: a folder of one dataset would otherwise be read by
    # every task sharing its split name. Point a task at such a folder with its environment variable.
    for candidate in candidates:
        if find_split_files(candidate, source):
            return candidate
    tried = ", ".join(str(c) for c in candidates) or (
        f"{data_dir}/{task_name}, {data_dir}/{source.repo}, {data_dir}/{source.name} (none exist)"
    )
    raise FileNotFoundError(
        f"task {task_name!r}: no files for split {source.split!r} of {source.repo}"
        f"{' (config ' + source.config + ')' if source.config else ''}; looked in: {tried}. Expected the "
        f"dataset as published on the Hugging Face hub (e.g. data/{source.split}-00000-of-00001.parquet) or "
        f"{source.split}.jsonl"
    )


# ----------------------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------------------


class _ParquetCells:
    """Lazy, thread-safe access to single cells of a parquet file, caching one row group at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: Any = None
        self._offsets: list[int] = []
        self._group = -1
        self._columns: dict[str, list[Any]] = {}

    def __getstate__(self) -> dict[str, Any]:  # picklable for data-loader workers; reopen lazily
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def get(self, row: int, column: str) -> Any:
        import pyarrow.parquet as pq

        with self._lock:
            if self._file is None:
                self._file = pq.ParquetFile(self.path)
                meta = self._file.metadata
                total = 0
                for g in range(meta.num_row_groups):
                    self._offsets.append(total)
                    total += meta.row_group(g).num_rows
            group = bisect.bisect_right(self._offsets, row) - 1
            if group != self._group:
                self._group, self._columns = group, {}
            if column not in self._columns:
                table = self._file.read_row_group(group, columns=[column])
                self._columns[column] = table.column(0).to_pylist()
            return self._columns[column][row - self._offsets[group]]


@dataclass(frozen=True)
class _StoredValue:
    """Picklable fetcher for an image value already held in the row (JSON copies, path strings)."""

    value: Any

    def __call__(self) -> Any:
        return self.value


@dataclass(frozen=True)
class _ParquetCell:
    """Picklable fetcher for one binary parquet cell, read on demand."""

    cells: _ParquetCells
    index: int
    column: str

    def __call__(self) -> Any:
        return self.cells.get(self.index, self.column)


def _is_binary_column(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return True
    if pa.types.is_struct(arrow_type):
        return any(arrow_type.field(i).name == "bytes" for i in range(arrow_type.num_fields))
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _is_binary_column(arrow_type.value_type)
    return False


@dataclass
class Row:
    """One dataset row with enough context to report errors and fetch images lazily."""

    data: dict[str, Any]
    file: Path
    index: int
    root: Path
    lazy_columns: frozenset[str] = frozenset()
    _cells: _ParquetCells | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.file}: row {self.index}"

    def error(self, name: str, message: str) -> DatasetFormatError:
        return DatasetFormatError(f"{self.where}: field {name!r}: {message}")

    def has(self, name: str) -> bool:
        return name in self.data or name in self.lazy_columns

    def get(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name, default)
        return default if value is None else value

    def require(
        self, name: str, kind: type | tuple[type, ...] | None = None, *, nonempty: bool = False
    ) -> Any:
        """The value of ``name``; missing/``None``, a wrong type or (with ``nonempty``) an empty value is an error."""
        if name not in self.data:
            if name in self.lazy_columns:
                raise self.error(name, "is a binary column, not a value")
            raise self.error(name, f"missing (row has: {', '.join(sorted(self.data)) or 'no fields'})")
        value = self.data[name]
        if value is None:
            raise self.error(name, "is null")
        if kind is not None and not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(name, f"expected {expected}, got {type(value).__name__} {value!r:.80}")
        if nonempty and hasattr(value, "__len__") and len(value) == 0:
            raise self.error(name, "is empty")
        return value

    def text(self, name: str, *, nonempty: bool = False) -> str:
        """A string field; integers/floats are accepted and converted (JSON copies sometimes store numbers)."""
        value = self.require(name, (str, int, float), nonempty=nonempty)
        if isinstance(value, bool):
            raise self.error(name, f"expected a string, got bool {value!r}")
        return value if isinstance(value, str) else str(value)

    def text_list(self, name: str, *, nonempty: bool = True) -> list[str]:
        value = self.require(name, (list, tuple), nonempty=nonempty)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                raise self.error(name, f"item {i} should be a string, got {type(item).__name__}")
            out.append(str(item))
        return out

    def image(self, name: str) -> LazyImage:
        """A lazy loader for the image in ``name``; stored paths are checked for existence now."""
        where = f"{self.where}: field {name!r}"
        search = (self.file.parent, self.root)
        if name in self.data:
            value = self.data[name]
            if value is None:
                raise self.error(name, "image is null")
            _check_image_value(value, where, search)
            return LazyImage(_StoredValue(value), where, search)
        if name in self.lazy_columns and self._cells is not None:
            return LazyImage(_ParquetCell(self._cells, self.index, name), where, search)
        raise self.error(name, "image field missing")


def _iter_parquet(path: Path, root: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetFormatError(f"{path}: cannot read parquet file: {exc}") from exc
    schema = pf.schema_arrow
    lazy = frozenset(f.name for f in schema if _is_binary_column(f.type))
    columns = [f.name for f in schema if f.name not in lazy]
    cells = _ParquetCells(path)
    index = 0
    if not columns:  # only binary columns: still yield one row per record
        for g in range(pf.metadata.num_row_groups):
            for _ in range(pf.metadata.row_group(g).num_rows):
                yield Row({}, path, index, root, lazy, cells)
                index += 1
        return
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        for record in batch.to_pylist():
            yield Row(record, path, index, root, lazy, cells)
            index += 1


def _iter_json(path: Path, root: Path) -> Iterator[Row]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            index = 0
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetFormatError(f"{path}: line {line_no}: invalid JSON: {exc}") from exc
                if not isinstance(record, dict):
                    raise DatasetFormatError(f"{path}: line {line_no}: expected a JSON object per line")
                yield Row(record, path, index, root)
                index += 1
        return
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}: invalid JSON: {exc}") from exc
    if isinstance(content, dict) and isinstance(content.get("data"), list):
        records: Sequence[Any] = content["data"]
    elif isinstance(content, dict) and content and all(isinstance(v, dict) for v in content.values()):
        records = list(content.values())  # {"<id>": row, ...} (e.g. MathVista's annot_testmini.json)
    elif isinstance(content, list):
        records = content
    else:
        raise DatasetFormatError(
            f"{path}: expected a list of rows, {{'data': [...]}}, or {{id: row}} mapping"
        )
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DatasetFormatError(
                f"{path}: row {index}: expected a JSON object, got {type(record).__name__}"
            )
        yield Row(record, path, index, root)


def iter_rows(files: Sequence[Path], root: Path) -> Iterator[Row]:
    """Rows of all ``files`` in order (image columns of parquet files are left lazy)."""
    for path in files:
        yield from (_iter_parquet(path, root) if path.suffix == ".parquet" else _iter_json(path, root))


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------


def _resolve_path(path: str, where: str, search: Sequence[Path]) -> Path:
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        if candidate.is_file():
            return candidate
        raise DatasetFormatError(f"{where}: image file {candidate} does not exist")
    for base in search:
        if (base / candidate).is_file():
            return base / candidate
    tried = ", ".join(str(base / candidate) for base in search)
    raise DatasetFormatError(f"{where}: image file {path!r} not found (tried {tried})")


def _check_image_value(value: Any, where: str, search: Sequence[Path]) -> None:
    """Cheap eager validation: stored paths must exist; embedded bytes are decoded later."""
    if isinstance(value, str) and not value.startswith("data:"):
        _resolve_path(value, where, search)
    elif isinstance(value, dict) and not value.get("bytes"):
        path = value.get("path")
        if not path:
            raise DatasetFormatError(f"{where}: image struct has neither bytes nor path")
        _resolve_path(path, where, search)


def _decode_bytes(data: bytes, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetFormatError(f"{where}: cannot decode image ({len(data)} bytes): {exc}") from exc
    return image.convert("RGB")


def decode_image(value: Any, where: str, search: Sequence[Path] = ()) -> Any:
    """Any stored image form → RGB ``PIL.Image`` (lmms-eval converts every visual with ``.convert("RGB")``)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, bytes | bytearray | memoryview):
        return _decode_bytes(bytes(value), where)
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            if isinstance(data, str):
                try:
                    data = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise DatasetFormatError(f"{where}: image bytes are a string but not base64") from exc
            return _decode_bytes(bytes(data), where)
        if value.get("path"):
            return decode_image(str(value["path"]), where, search)
        raise DatasetFormatError(f"{where}: image struct has neither bytes nor path")
    if isinstance(value, str):
        if value.startswith("data:"):
            try:
                return _decode_bytes(base64.b64decode(value.split(",", 1)[1]), where)
            except (IndexError, binascii.Error, ValueError) as exc:
                raise DatasetFormatError(f"{where}: malformed data URI") from exc
        path = _resolve_path(value, where, search)
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as exc:
            raise DatasetFormatError(f"{where}: cannot decode image file {path}: {exc}") from exc
    if value is None:
        raise DatasetFormatError(f"{where}: image is null")
    raise DatasetFormatError(f"{where}: unsupported image value of type {type(value).__name__}")


class LazyImage:
    """Zero-argument callable that loads one image (``Doc.load_images`` calls it); errors name file/row/field."""

    def __init__(self, fetch: Callable[[], Any], where: str, search: Sequence[Path] = ()) -> None:
        self._fetch = fetch
        self.where = where
        self._search = tuple(search)

    def __call__(self) -> Any:
        return decode_image(self._fetch(), self.where, self._search)

    def __repr__(self) -> str:
        return f"LazyImage({self.where})"


# ----------------------------------------------------------------------------------------------------------
# The task base class
# ----------------------------------------------------------------------------------------------------------


def letter_options(options: Sequence[str]) -> str:
    """``A. first\\nB. second`` — the option block shared by AI2D, ScienceQA, MMMU and MathVista prompts."""
    return "\n".join(f"{chr(ord('A') + i)}. {opt}" for i, opt in enumerate(options))


class BenchmarkTask(Task):
    """A task reading a local copy of a published dataset.

    Subclasses set ``name``, ``source`` and the scoring attributes and implement ``row_to_doc`` (validate one
    row, build a :class:`Doc` with lazy images), ``doc_to_text``, ``score`` and ``aggregate``. ``load``
    validates all selected rows before yielding the first document.

    Generation settings reproduce the lmms-eval ``llava`` plugin: task YAML values, plugin defaults for the
    rest, and no ``until`` truncation (the plugin never truncates; EOS ends generation).
    """

    source: ClassVar[DatasetSource]
    display_name: str = ""
    #: lmms-eval's ``llava``-specific ``image_aspect_ratio`` override; a no-op for checkpoints whose config
    #: already sets one (AnyRes models do), kept for completeness.
    image_aspect_ratio: str | None = None

    def __init__(self) -> None:
        if not self.data_env:
            self.data_env = "VISTUNE_DATA_" + re.sub(r"[^A-Za-z0-9]", "_", self.name).upper()

    # -- loading ------------------------------------------------------------------------------------------
    def locate(self, data_dir: str | Path | None) -> Path:
        return locate_dataset(self.name, self.source, data_dir, self.data_env)

    def rows(self, data_dir: str | Path | None) -> Iterator[Row]:
        root = self.locate(data_dir)
        return iter_rows(find_split_files(root, self.source), root)

    def load(self, data_dir: str | Path | None, limit: int | None = None) -> Iterator[Doc]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        docs: list[Doc] = []
        first_seen: dict[str, str] = {}
        for position, row in enumerate(self.rows(data_dir)):
            if limit is not None and position >= limit:
                break
            doc = self.row_to_doc(row, position)
            if doc.doc_id in first_seen:
                raise DatasetFormatError(
                    f"{row.where}: document id {doc.doc_id!r} repeats the one at {first_seen[doc.doc_id]}"
                )
            first_seen[doc.doc_id] = row.where
            docs.append(doc)
        return iter(docs)

    def row_to_doc(self, row: Row, position: int) -> Doc:
        raise NotImplementedError

    # -- prompting ----------------------------------------------------------------------------------------
    def doc_to_text(self, doc: Doc) -> str:
        raise NotImplementedError

    def doc_to_messages(self, doc: Doc) -> list[dict[str, Any]]:
        """One user turn: an ``{"type": "image"}`` entry per visual (the llava plugin puts them before the text),
        then the task text."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in doc.images]
        content.append({"type": "text", "text": self.doc_to_text(doc)})
        return [{"role": "user", "content": content}]

    # -- scoring helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _record(doc: Doc, prediction: str, **fields: Any) -> dict[str, Any]:
        return {"doc_id": doc.doc_id, "prediction": prediction, **fields}

    @staticmethod
    def _mean(records: Sequence[dict[str, Any]], key: str = "score") -> float:
        if not records:
            raise ValueError("cannot aggregate an empty list of records")
        return sum(float(r[key]) for r in records) / len(records)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            {
                "display_name": self.display_name or self.name,
                "dataset": self.source.repo,
                "dataset_config": self.source.config,
                "dataset_split": self.source.split,
                "data_env": self.data_env,
                "image_aspect_ratio": self.image_aspect_ratio,
            }
        )
        return info
