"""A tiny pixel font defined in code, and a measurement of when text stops being legible.

The synthetic world never uses system fonts: every glyph is a hand-drawn bitmap below, so rendering is
bit-identical on every machine and we control exactly how many pixels a glyph spans. Two fonts ship:

* ``"5x7"`` (default) - the classic dot-matrix LCD shapes; every pair of letter/digit glyphs differs in
  at least two pixels, so a glyph is unambiguous at native resolution.
* ``"3x5"`` - a minimal font for experiments with even smaller text; all glyphs are distinct.

Text is laid out on a grid of square *cells* (``cell`` pixels). A glyph is scaled by an integer factor
``cell // (glyph_height + 1)`` (nearest neighbour, so pixels stay crisp) and centred in its cell, leaving at
least one pixel of background between neighbours. When ``cell`` divides the encoder's view size, each glyph
sits inside whole encoder patches of a cell-sized or cell-dividing patch and never straddles an AnyRes crop.

Legibility after downscaling is *measured*, not assumed: :func:`legibility` renders every glyph at each
sub-pixel phase, resizes it the way an image processor would, and counts the glyph pairs that become
*confusable*: two different glyphs are confusable when, for some pair of phases, they look more alike than
one of them does under a mere phase shift (its worst intra-class distance). At native resolution no pair is
confusable; squashing a whole document into one encoder view makes most of them collapse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

_RAW_5X7: dict[str, str] = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# #...# .#.#. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    "-": "..... ..... ..... ##### ..... ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "'": ".##.. ..#.. .#... ..... ..... ..... .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    " ": "..... ..... ..... ..... ..... ..... .....",
}

_RAW_3X5: dict[str, str] = {
    "A": ".#. #.# ### #.# #.#",
    "B": "##. #.# ##. #.# ##.",
    "C": ".## #.. #.. #.. .##",
    "D": "##. #.# #.# #.# ##.",
    "E": "### #.. ##. #.. ###",
    "F": "### #.. ##. #.. #..",
    "G": ".## #.. #.# #.# .##",
    "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###",
    "J": "..# ..# ..# #.# .#.",
    "K": "#.# #.# ##. #.# #.#",
    "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#",
    "N": "##. #.# #.# #.# #.#",
    "O": ".#. #.# #.# #.# .#.",
    "P": "##. #.# ##. #.. #..",
    "Q": ".#. #.# #.# ##. .##",
    "R": "##. #.# ##. ##. #.#",
    "S": ".## #.. .#. ..# ##.",
    "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###",
    "V": "#.# #.# #.# #.# .#.",
    "W": "#.# #.# ### ### #.#",
    "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.",
    "Z": "### ..# .#. #.. ###",
    "0": "### #.# #.# #.# ###",
    "1": ".#. ##. .#. .#. ###",
    "2": "##. ..# .#. #.. ###",
    "3": "##. ..# .#. ..# ##.",
    "4": "#.# #.# ### ..# ..#",
    "5": "### #.. ##. ..# ##.",
    "6": ".## #.. ### #.# ###",
    "7": "### ..# .#. .#. .#.",
    "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ##.",
    ".": "... ... ... ... .#.",
    ",": "... ... ... .#. #..",
    ":": "... .#. ... .#. ...",
    "?": "##. ..# .#. ... .#.",
    "!": ".#. .#. .#. ... .#.",
    "-": "... ... ### ... ...",
    "+": "... .#. ### .#. ...",
    "=": "... ### ... ### ...",
    "/": "..# ..# .#. #.. #..",
    "%": "#.# ..# .#. #.. #.#",
    "'": ".#. .#. ... ... ...",
    "(": "..# .#. .#. .#. ..#",
    ")": "#.. .#. .#. .#. #..",
    "#": "#.# ### #.# ### #.#",
    " ": "... ... ... ... ...",
}

#: Letters and digits: the default document charset.
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _parse(raw: dict[str, str], height: int, width: int) -> dict[str, np.ndarray]:
    glyphs: dict[str, np.ndarray] = {}
    for ch, spec in raw.items():
        rows = spec.split()
        if len(rows) != height or any(len(r) != width for r in rows):
            raise ValueError(f"font glyph {ch!r}: expected {height} rows of {width} pixels, got {rows}")
        glyphs[ch] = np.array([[c == "#" for c in r] for r in rows], dtype=bool)
    return glyphs


@dataclass(frozen=True)
class PixelFont:
    """A bitmap font: ``glyphs[ch]`` is a boolean ``(height, width)`` array (True = ink)."""

    name: str
    height: int
    width: int
    glyphs: dict[str, np.ndarray]

    @property
    def charset(self) -> str:
        return "".join(self.glyphs)

    def scale_for_cell(self, cell: int) -> int:
        """Largest integer scale whose glyph (plus one background pixel) fits a ``cell`` x ``cell`` square."""
        scale = min(cell // (self.height + 1), cell // (self.width + 1))
        if scale < 1:
            raise ValueError(
                f"cell={cell} px is too small for font {self.name!r}: needs at least {self.height + 1} px"
            )
        return scale

    def check_text(self, text: str, what: str = "text") -> None:
        """Raise a ``ValueError`` naming the first character the font cannot draw."""
        for i, ch in enumerate(text):
            if ch not in self.glyphs:
                raise ValueError(
                    f"{what}: character {ch!r} at position {i} of {text!r} is not in font {self.name!r} "
                    f"(available: {self.charset!r})"
                )

    def glyph(self, ch: str, scale: int = 1) -> np.ndarray:
        """The glyph bitmap for ``ch`` scaled by an integer factor (nearest neighbour)."""
        self.check_text(ch, "glyph")
        g = self.glyphs[ch]
        return np.kron(g, np.ones((scale, scale), dtype=bool)) if scale > 1 else g

    def text_mask(self, text: str, cell: int) -> np.ndarray:
        """Boolean ink mask of one line of ``text``: ``(cell, len(text) * cell)``, one glyph per cell."""
        self.check_text(text)
        scale = self.scale_for_cell(cell)
        gh, gw = self.height * scale, self.width * scale
        oy, ox = (cell - gh) // 2, (cell - gw) // 2
        mask = np.zeros((cell, max(1, len(text)) * cell), dtype=bool)
        for i, ch in enumerate(text):
            mask[oy : oy + gh, i * cell + ox : i * cell + ox + gw] = self.glyph(ch, scale)
        return mask


FONTS: dict[str, PixelFont] = {
    "5x7": PixelFont("5x7", 7, 5, _parse(_RAW_5X7, 7, 5)),
    "3x5": PixelFont("3x5", 5, 3, _parse(_RAW_3X5, 5, 3)),
}


def get_font(name: str) -> PixelFont:
    if name not in FONTS:
        raise KeyError(f"unknown pixel font {name!r}; known: {', '.join(sorted(FONTS))}")
    return FONTS[name]


def draw_text(
    pixels: np.ndarray,
    text: str,
    top: int,
    left: int,
    cell: int,
    color: tuple[int, int, int],
    font: PixelFont,
) -> None:
    """Draw ``text`` into an ``(H, W, 3)`` uint8 array in place, cell-aligned at pixel ``(top, left)``.

    Raises ``ValueError`` if the text would leave the array (silently clipped text would make the ground
    truth lie about what is visible).
    """
    mask = font.text_mask(text, cell)
    h, w = mask.shape
    if top < 0 or left < 0 or top + h > pixels.shape[0] or left + w > pixels.shape[1]:
        raise ValueError(
            f"text {text!r} at (top={top}, left={left}) needs {h}x{w} px but the canvas is "
            f"{pixels.shape[0]}x{pixels.shape[1]}"
        )
    region = pixels[top : top + h, left : left + w]
    region[mask] = color


# --------------------------------------------------------------------------------------------------
# Legibility measurement
# --------------------------------------------------------------------------------------------------
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class Legibility:
    """Result of :func:`legibility` for one font, cell size and downscale factor.

    ``confusable_pairs / total_pairs`` is the fraction of glyph pairs that collapse; ``min_distance`` is the
    smallest best-phase distance over all pairs (in units of one full-contrast pixel after resizing).
    """

    factor: float
    tolerance: float
    confusable_pairs: int
    total_pairs: int
    min_distance: float
    confusable: tuple[tuple[str, str], ...]

    @property
    def confusable_fraction(self) -> float:
        return self.confusable_pairs / self.total_pairs if self.total_pairs else 0.0

    @property
    def legible(self) -> bool:
        return self.confusable_pairs == 0


def _phase_renders(font: PixelFont, chars: str, cell: int, factor: float, resample: str) -> np.ndarray:
    """Every glyph at every sub-pixel phase, resized: ``(len(chars), n_phases, pixels)`` in [0, 1]."""
    n_off = max(1, math.ceil(factor - 1e-9))
    size = 3 * cell + n_off  # the glyph cell sits in the middle of a 3x3-cell context
    out_size = max(1, round(size / factor))
    renders = np.zeros((len(chars), n_off * n_off, out_size * out_size), dtype=np.float64)
    for gi, ch in enumerate(chars):
        mask = font.text_mask(ch, cell)
        for dy in range(n_off):
            for dx in range(n_off):
                canvas = np.full((size, size), 255, dtype=np.uint8)
                canvas[cell + dy : 2 * cell + dy, cell + dx : 2 * cell + dx][mask] = 0
                im = Image.fromarray(canvas, mode="L")
                if factor != 1:
                    im = im.resize((out_size, out_size), _RESAMPLE[resample])
                renders[gi, dy * n_off + dx] = np.asarray(im, dtype=np.float64).ravel() / 255.0
    return renders


@lru_cache(maxsize=64)
def legibility(
    font: str = "5x7",
    cell: int = 8,
    factor: float = 1.0,
    chars: str = ALNUM,
    resample: str = "bicubic",
    tolerance: float = 0.5,
) -> Legibility:
    """Measure how many glyph pairs of ``chars`` become confusable after downscaling by ``factor``.

    ``factor`` is the linear downscale (3.0 when a 3x3-tile document is squashed into one view, 1.5 when it
    is resized into a 2x2 AnyRes grid, 1.0 when a 3x3 grid crops it losslessly). Each glyph is rendered
    black on white in a 3x3-cell context at every integer pixel offset ``0..ceil(factor)-1`` (the
    sub-pixel phases a resize grid can meet) and resized with ``resample`` (8-bit, like an image
    processor). The reader is granted the best case: it knows the phase. Pair ``(a, b)`` is *confusable*
    when at some phase the two resized renders differ by less than ``tolerance`` in L2 distance over
    [0, 1] intensities, i.e. by less than ``tolerance`` of one output pixel's full black-to-white contrast.
    With the default 0.5, the 5x7 font in 8 px cells has no confusable pair at factor 1-1.33, ~1 % at 1.5,
    ~10 % at 2 and >95 % at 3: the measured basis of "legible in AnyRes crops, not in the base view".
    """
    if factor <= 0:
        raise ValueError(f"legibility: factor must be > 0, got {factor}")
    if tolerance <= 0:
        raise ValueError(f"legibility: tolerance must be > 0, got {tolerance}")
    if resample not in _RESAMPLE:
        raise ValueError(f"legibility: resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    f = get_font(font)
    f.check_text(chars, "legibility chars")
    renders = _phase_renders(f, chars, cell, factor, resample)
    n = len(chars)
    confusable: list[tuple[str, str]] = []
    min_distance = math.inf
    for i in range(n):
        # best-phase distance from glyph i to every other glyph: (n, phases) -> (n,)
        d = np.sqrt(((renders[i][None, :, :] - renders) ** 2).sum(-1)).min(-1)
        for j in range(i + 1, n):
            min_distance = min(min_distance, float(d[j]))
            if d[j] < tolerance:
                confusable.append((chars[i], chars[j]))
    total = n * (n - 1) // 2
    return Legibility(
        factor, tolerance, len(confusable), total, min_distance if total else 0.0, tuple(confusable)
    )
