"""Still images as one-frame clips, and the dynamic tiling imported InternVL checkpoints expect.

`StillImage` reads a jpg / png / webp file into a `FrameSource` of one frame: EXIF orientation
applied, any colour mode (RGBA, greyscale, palette, 16-bit) converted to 8-bit RGB. Everything
downstream (SAM2, masks, results JSON) treats it as a 1-frame video.

Tiling (``ProcessorConfig.max_image_tiles`` > 1, the setting of imported checkpoints): InternVL2.5,
Sa2VA and the reference ReVIOSa show the MLLM a still image as a grid of S x S tiles (S = 448)
whose aspect ratio is closest to the image's, at most ``max_image_tiles`` of them, plus an S x S
thumbnail of the whole image when there is more than one tile. All tiles go into one image block
of ``tiles * g * g`` ``<IMG_CONTEXT>`` tokens. SAM2 still gets the one image. Videos are never tiled.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from reviosa.video import FrameSource, VideoFile, VideoLimits, _capped_size

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# PIL's names for what those suffixes hold; MPO is the multi-picture JPEG many cameras write.
IMAGE_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
# Beyond this many pixels decoding alone would take gigabytes; PIL's own guard only warns below 2x.
MAX_PIXELS = 100_000_000


def is_image_path(path: str | Path) -> bool:
    """Whether ``path`` names a still image by its suffix (jpg, jpeg, png, webp; any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def open_media(path: str | Path, limits: VideoLimits | None = None) -> FrameSource:
    """A `StillImage` for jpg / png / webp files, a `VideoFile` for anything else."""
    if is_image_path(path):
        return StillImage(path, limits)
    return VideoFile(path, limits)


class StillImage:
    """A jpg / png / webp image as a one-frame clip (``FrameSource``).

    The frame is decoded once on opening (one frame is small) and kept as uint8 (H, W, 3).
    ``limits.max_side`` downscales it as it would a video frame; frame caps and strides do nothing.
    Raises FileNotFoundError / ValueError whose messages name the file, never its folder.
    """

    still = True  # tells the model this is an image (tiled for the MLLM), not a 1-frame video

    def __init__(self, path: str | Path, limits: VideoLimits | None = None):
        self.path = Path(path)
        self.limits = limits or VideoLimits()
        name = self.path.name
        if not self.path.is_file():
            raise FileNotFoundError(f"image not found: {name}")
        rgb = _decode(self.path)
        self.source_size = (rgb.height, rgb.width)
        self.size = _capped_size(self.source_size, self.limits.max_side)
        if self.size != self.source_size:
            logger.info(
                "%s: %dx%d downscaled to %dx%d", name, rgb.width, rgb.height, self.size[1], self.size[0]
            )
            rgb = rgb.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC)
        self.frame = np.asarray(rgb, dtype=np.uint8).copy()  # (H, W, 3)
        self.num_frames = 1
        self.source_frames = 1
        self.stride = 1
        self.kept = [0]
        self.fps = self.fps_source = 1.0

    def iter_frames(self) -> Iterator[np.ndarray]:
        yield self.frame

    def read(self, indices: Sequence[int]) -> np.ndarray:
        if any(i != 0 for i in indices):
            raise ValueError(f"the image {self.path.name} is a still: it has only frame 0")
        return np.stack([self.frame for _ in indices]) if indices else np.empty((0, *self.size, 3), np.uint8)


def _decode(path: Path) -> Image.Image:
    """The image at ``path`` as upright 8-bit RGB; ValueError naming the file if it cannot be."""
    name = path.name
    hint = "upload a jpg, png or webp image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                kind = IMAGE_FORMATS.get(image.format or "")
                if kind is None:
                    raise ValueError(f"the image {name} is a {image.format or 'unknown'} image; {hint}")
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ValueError(
                        f"the image {name} has {width}x{height} pixels; the limit is {MAX_PIXELS // 1_000_000} "
                        "megapixels. Downscale it first."
                    )
                if getattr(image, "n_frames", 1) > 1:
                    logger.info("%s is animated: using its first frame", name)
                image.seek(0)
                image.load()
                upright = ImageOps.exif_transpose(image)  # cameras store portrait shots sideways
                return _to_rgb(upright)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(
            f"the file {name} is not an image that can be read ({type(err).__name__}); {hint}"
        ) from err
    except (OSError, SyntaxError, EOFError) as err:
        # Truncated or corrupt data; PIL's message may carry the path, so only its type is shown.
        raise ValueError(f"the image {name} is damaged or truncated and cannot be decoded; {hint}") from err


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, as the reference's ``convert('RGB')``: alpha dropped, palettes and grey expanded.

    16-bit and 32-bit greyscale (PNG "I;16", "I") are rescaled to 8 bits rather than clipped at 255.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when such a palette goes straight to RGB
    return image.convert("RGB") if image.mode != "RGB" else image


# --- dynamic tiling ---------------------------------------------------------------------------------


def tile_grid(
    width: int, height: int, max_tiles: int, min_tiles: int = 1, tile: int = 448
) -> tuple[int, int]:
    """(columns, rows) of the tiling of a width x height image, as InternVL's dynamic preprocessing.

    Candidate grids are every (c, r) with min_tiles <= c * r <= max_tiles, visited by increasing tile
    count (the same order the reference visits them in). The grid whose c / r is nearest the image's
    aspect ratio wins; on an exact tie a later (larger) grid replaces the current one only when the
    image has more than half the pixels the larger grid would show.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height} is empty")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"tile counts need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    aspect = width / height
    # The reference sorts a set by tile count; equal counts keep the set's iteration order, which
    # decides exact ties between grids of the same count. A set of the same tuples iterates alike.
    grids = {
        (c, r)
        for c in range(1, max_tiles + 1)
        for r in range(1, max_tiles + 1)
        if min_tiles <= c * r <= max_tiles
    }
    best, best_diff = (1, 1), float("inf")
    for c, r in sorted(grids, key=lambda g: g[0] * g[1]):
        diff = abs(aspect - c / r)
        if diff < best_diff:
            best, best_diff = (c, r), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * c * r:
            best = (c, r)
    return best


def tile_count(width: int, height: int, max_tiles: int, thumbnail: bool = True) -> int:
    """Images the MLLM sees for a width x height still: the grid's tiles, plus the thumbnail if > 1."""
    if max_tiles <= 1:
        return 1
    c, r = tile_grid(width, height, max_tiles)
    return c * r + (1 if thumbnail and c * r > 1 else 0)


def tile_image(frame: np.ndarray, max_tiles: int, tile: int = 448, thumbnail: bool = True) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (N, tile, tile, 3): the grid's tiles row by row, then the thumbnail.

    Resizing is PIL bicubic on uint8 (the reference resizes PIL images with their default filter).
    ``max_tiles`` 1 gives the whole image resized to one tile (no thumbnail).
    """
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {frame.dtype} {frame.shape}")
    image = Image.fromarray(frame)
    width, height = image.size
    cols, rows = tile_grid(width, height, max(1, max_tiles), tile=tile)
    grid = image.resize((cols * tile, rows * tile), Image.Resampling.BICUBIC)
    tiles = [
        grid.crop((x * tile, y * tile, (x + 1) * tile, (y + 1) * tile))
        for y in range(rows)
        for x in range(cols)
    ]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile), Image.Resampling.BICUBIC))
    return np.stack([np.asarray(t, dtype=np.uint8) for t in tiles])
