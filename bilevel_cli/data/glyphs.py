"""Glyphs: an offline, Omniglot-like few-shot data set rendered from the Hershey vector fonts.

Each Hershey font is an alphabet and each of its glyphs a character. Of the 3170 glyphs of the 32 fonts, 2660 are
neither empty nor punctuation-sized, and 994 of those are distinct shapes once the drawings that several fonts share
(also up to a quarter turn) are kept once. They are split 1200 : 100 : 323 like Omniglot, 735 / 61 / 198 characters,
and every character is drawn by 20 "drawers", each a random affine distortion and stroke width of it; the four quarter
turns of each character then become classes of their own split: 2940 / 244 / 792 classes. Rendering takes about 2 s on
2 CPU cores, and the cache file is 62 MB.
"""

import math
import os
from pathlib import Path

import torch
from HersheyFonts import HersheyFonts
from torch.nn.utils.rnn import pad_sequence

from bilevel_cli.data import cache
from bilevel_cli.data.rotations import with_rotations
from bilevel_cli.errors import UserError

DRAWERS = 20
SIZE = 28
_OMNIGLOT_SPLIT = (1200, 100, 323)
# Images rasterised at once: about 40 keep the tensors of _rasterise in the CPU caches; many more or fewer ran slower.
_BATCH_IMAGES = 40


def load_glyphs(root: str | os.PathLike, seed: int = 0) -> dict[str, torch.Tensor]:
    """Glyph characters split into meta-train/val/test; cached as a .pt file under root."""
    path = Path(root) / "glyphs" / f"glyphs-v1-seed{seed}.pt"
    splits = cache.load(path)  # None when missing, truncated or corrupt: rendered again
    if splits is None:
        splits = _render_splits(seed)
        try:
            cache.save(splits, path)
        except OSError as error:
            raise UserError(f"cannot write the glyphs cache {path} ({error.strerror or error}); set data.root (or "
                            "BILEVEL_DATA_DIR) to a writable folder") from None
    return splits


def _render_splits(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    characters = _characters()
    order = torch.randperm(len(characters), generator=generator).tolist()
    points, half_width = zip(*(_distort(characters[i], generator) for i in order))
    ink = _render(list(points), torch.stack(half_width), SIZE)
    images = (ink * 255).round().to(torch.uint8).unsqueeze(2)
    n_train, n_val = (round(len(order) * n / sum(_OMNIGLOT_SPLIT)) for n in _OMNIGLOT_SPLIT[:2])
    # Rotating after the split keeps all four turns of a character in the same split.
    return {"train": with_rotations(images[:n_train]),
            "val": with_rotations(images[n_train:n_train + n_val]),
            "test": with_rotations(images[n_train + n_val:])}


def _characters() -> list[torch.Tensor]:
    """Line segments (S, 2 ends, xy) in font units of every distinct, big enough glyph of every Hershey font."""
    fonts = HersheyFonts()
    candidates = []
    for name in fonts.default_font_names:
        fonts.load_default_font(name)
        for _, glyph in sorted(fonts.all_glyphs.items()):
            ends = [(a, b) for stroke in glyph.strokes for a, b in zip(stroke, stroke[1:])]
            segments = torch.tensor(ends, dtype=torch.float32).reshape(-1, 2, 2)
            # Punctuation reaches at most about half the cap height, lowercase letters two thirds of it;
            # single segments (hyphens, bars, slashes) are no character either.
            if len(segments) >= 2 and _extent(segments).max() >= 0.6 * (glyph.base_line - glyph.cap_line):
                candidates.append(segments)
    return [candidates[i] for i in _distinct(candidates)]


def _distinct(candidates: list[torch.Tensor]) -> list[int]:
    """Indices of the first of each group of near-identical shapes, as seen on a thresholded 16×16 bitmap."""
    ink = _render([_fit(s, 14, 16)[None] for s in candidates], torch.full((len(candidates), 1), 0.75), 16)
    bitmaps = ink[:, 0] > 0.5
    flat = bitmaps.flatten(1).float()
    # Rotated classes are added later, so a character that is a quarter turn of another would leak across splits.
    overlap = torch.stack([torch.rot90(bitmaps, k, (1, 2)).flatten(1).float() @ flat.T for k in range(4)]).amax(0)
    area = flat.sum(1)
    duplicate = overlap / (area[:, None] + area[None, :] - overlap) >= 0.9
    kept = []
    for i in range(len(candidates)):
        if not duplicate[i, kept].any():
            kept.append(i)
    return kept


def _distort(segments: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAWERS random affine distortions (DRAWERS, S, 2, 2) in pixel units of a character, and their half widths."""
    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(DRAWERS, *shape, generator=generator)

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.8, 1.05, 2)
    shear = uniform(-0.15, 0.15)
    shift = uniform(-2, 2, 2)
    half_width = uniform(0.6, 1.1)
    cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros(DRAWERS), torch.ones(DRAWERS)
    rotation = torch.stack([cos, -sin, sin, cos], 1).reshape(-1, 2, 2)
    shearing = torch.stack([one, shear, zero, one], 1).reshape(-1, 2, 2)
    matrix = rotation @ shearing @ torch.diag_embed(scale)
    centre = SIZE / 2
    points = torch.einsum("nij,skj->nski", matrix, _fit(segments, 20, SIZE) - centre) + centre + shift[:, None, None]
    # Push a drawing that the distortion took over an edge back into the frame, ink included.
    margin = (half_width + 0.5)[:, None]
    low, high = points.flatten(1, 2).amin(1), points.flatten(1, 2).amax(1)
    points = points + ((margin - low).clamp(min=0) - (high - (SIZE - margin)).clamp(min=0))[:, None, None]
    return points, half_width


def _render(drawings: list[torch.Tensor], half_width: torch.Tensor, size: int) -> torch.Tensor:
    """Ink (N, B, size, size) of N groups of B drawings, from each group's segments (B, S, 2, 2) in pixel units."""
    ink = torch.empty(*half_width.shape, size, size)
    # Groups are batched in order of length, so that each batch needs little padding.
    by_length = sorted(range(len(drawings)), key=lambda i: drawings[i].shape[1])
    per_batch = max(1, _BATCH_IMAGES // half_width.shape[1])
    for start in range(0, len(drawings), per_batch):
        batch = by_length[start:start + per_batch]
        # Padding segments far outside the image leave no ink.
        padded = pad_sequence([drawings[i].transpose(0, 1) for i in batch], batch_first=True, padding_value=-size)
        segments = padded.transpose(1, 2).flatten(0, 1)
        ink[batch] = _rasterise(segments, half_width[batch].flatten(), size).unflatten(0, (len(batch), -1))
    return ink


def _extent(segments: torch.Tensor) -> torch.Tensor:
    points = segments.flatten(0, 1)
    return points.amax(0) - points.amin(0)


def _fit(segments: torch.Tensor, box: float, size: int) -> torch.Tensor:
    """Scale and move segments so that their bounding box fits a box×box square in the middle of a size×size image."""
    points = segments.flatten(0, 1)
    middle = (points.amax(0) + points.amin(0)) / 2
    return (segments - middle) * (box / _extent(segments).max()) + size / 2


def _rasterise(segments: torch.Tensor, half_width: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased ink in [0, 1] of (B, size, size) images from segments (B, S, 2, 2) in pixel units."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    # Pixel centres (1, P, 1) against segments (B, 1, S); x and y are kept apart because reductions over a
    # trailing xy dimension of 2 made this many times slower.
    x = centres.repeat(size)[None, :, None]
    y = centres.repeat_interleave(size)[None, :, None]
    start_x, start_y = segments[:, None, :, 0, 0], segments[:, None, :, 0, 1]
    step_x, step_y = segments[:, None, :, 1, 0] - start_x, segments[:, None, :, 1, 1] - start_y
    offset_x, offset_y = x - start_x, y - start_y
    # Position of the point of the segment nearest to the pixel, 0 at its start and 1 at its end.
    along = (offset_x * step_x + offset_y * step_y) / (step_x.square() + step_y.square()).clamp(min=1e-9)
    along = along.clamp(0, 1)
    distance = ((offset_x - along * step_x).square() + (offset_y - along * step_y).square()).amin(-1).sqrt()
    return (half_width[:, None] + 0.5 - distance).clamp(0, 1).reshape(-1, size, size)
