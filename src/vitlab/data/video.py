"""Video data: decoding (PyAV) and frame folders, Kinetics-style annotation lists, clip sampling, clip transforms,
and the bundled ``moving_digits`` set (specs/dualformer.md §3.1 and §6).

Every item is ``{"video": FloatTensor (3, T, H, W) in [0, 1], "label": int}``; a test-mode item with several views
(temporal clips × spatial crops) holds ``(V, 3, T, H, W)`` instead, and the multi-view evaluator folds the views
(``vitlab.evaluation.multiview``). Normalisation is not applied here: the data sets expose ``mean`` and ``std``.
"""

from __future__ import annotations

import csv
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vitlab.data.dataset import DataError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
ClipTransform = Callable[[Tensor], Tensor]


# ------------------------------------------------------------------------------------------------------------
# Decoding


def _open_container(path: Path) -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a declared dependency
        raise DataError(f"{path}: decoding video needs PyAV (pip install av)") from exc
    if not path.is_file():
        raise DataError(f"{path}: video file not found")
    try:
        return av.open(str(path))
    except Exception as exc:  # PyAV raises several error types for unreadable containers
        raise DataError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc


def count_video_frames(path: str | Path) -> int:
    """Number of frames of the first video stream (container metadata, else counted by demuxing)."""
    path = Path(path)
    with _open_container(path) as container:
        if not container.streams.video:
            raise DataError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        try:
            count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        except Exception as exc:
            raise DataError(f"{path}: cannot read video ({type(exc).__name__}: {exc})") from exc
    if count == 0:
        raise DataError(f"{path}: the video stream has no frames")
    return count


def decode_video_frames(path: str | Path, indices: Sequence[int] | None = None) -> Tensor:
    """Decode frames ``indices`` (all if None) of a video file with PyAV → uint8 (len(indices), H, W, 3), RGB.

    Indices may repeat and come in any order. Decoding stops after the largest index. An index past the last
    decodable frame (metadata that over-counts) takes the last decoded frame.
    """
    path = Path(path)
    wanted = None if indices is None else [int(i) for i in indices]
    last_needed = None if wanted is None else max(wanted)
    frames: list[np.ndarray] = []
    with _open_container(path) as container:
        if not container.streams.video:
            raise DataError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if last_needed is not None and len(frames) > last_needed:
                    break
        except Exception as exc:
            raise DataError(
                f"{path}: video decoding failed after {len(frames)} frames ({type(exc).__name__}: {exc})"
            ) from exc
    if not frames:
        raise DataError(f"{path}: no frame could be decoded")
    if wanted is None:
        wanted = list(range(len(frames)))
    picked = [frames[min(i, len(frames) - 1)] for i in wanted]
    return torch.from_numpy(np.stack(picked))


def list_frame_files(folder: str | Path) -> list[Path]:
    """Image files of a frame folder, sorted by name (img_00001.jpg, ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: frame folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    if not files:
        raise DataError(f"{folder}: no frame images ({', '.join(FRAME_EXTENSIONS)}) in the folder")
    return files


def read_frame_folder(folder: str | Path, indices: Sequence[int] | None = None) -> Tensor:
    """Read frames ``indices`` (all if None) of a folder of images → uint8 (len(indices), H, W, 3), RGB."""
    from PIL import Image

    files = list_frame_files(folder)
    wanted = range(len(files)) if indices is None else [min(int(i), len(files) - 1) for i in indices]
    frames = []
    for i in wanted:
        try:
            with Image.open(files[i]) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except Exception as exc:
            raise DataError(f"{files[i]}: cannot read frame image ({type(exc).__name__}: {exc})") from exc
    return torch.from_numpy(np.stack(frames))


def frames_to_clip(frames: Tensor) -> Tensor:
    """uint8 frames (T, H, W, 3) → float clip (3, T, H, W) in [0, 1]."""
    return frames.permute(3, 0, 1, 2).float().div_(255.0)


# ------------------------------------------------------------------------------------------------------------
# Clip sampling (mmaction2 ``SampleFrames`` semantics, spec §3.1)


def sample_clip_indices(
    num_frames: int,
    clip_len: int,
    frame_interval: int = 1,
    num_clips: int = 1,
    test_mode: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Frame indices (num_clips, clip_len) of ``clip_len`` frames every ``frame_interval`` frames.

    Training: the video is cut into ``num_clips`` equal segments and each clip starts at a random offset within its
    segment. Test: clips start at the centres of the segments (uniform, deterministic). A video shorter than a clip
    loops (indices modulo ``num_frames``).
    """
    if num_frames < 1:
        raise DataError(f"cannot sample clips from a video of {num_frames} frames")
    if clip_len < 1 or frame_interval < 1 or num_clips < 1:
        raise DataError(
            f"clip_len, frame_interval and num_clips must be >= 1, got {clip_len}, {frame_interval}, {num_clips}"
        )
    span = clip_len * frame_interval  # frames covered by one clip
    room = num_frames - span + 1  # number of valid start positions
    if test_mode:
        if room > 0:
            segment = room / num_clips
            starts = [int(segment * i + segment / 2) for i in range(num_clips)]
        else:
            starts = [0] * num_clips
    else:
        segment = room // num_clips
        if segment > 0:
            offsets = torch.randint(segment, (num_clips,), generator=generator).tolist()
            starts = [segment * i + o for i, o in enumerate(offsets)]
        elif room > 0:
            starts = sorted(torch.randint(room, (num_clips,), generator=generator).tolist())
        else:
            starts = [0] * num_clips
    steps = torch.arange(clip_len) * frame_interval
    return (torch.tensor(starts).unsqueeze(1) + steps.unsqueeze(0)) % num_frames


# ------------------------------------------------------------------------------------------------------------
# Clip transforms: tensors (C, T, H, W) float in [0, 1]; the same geometry for every frame of a clip.


def resize_clip(clip: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of every frame to (H, W); anti-aliased when shrinking. (C, T, H, W) → (C, T, h, w)."""
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    shrinking = clip.shape[-2] > size[0] or clip.shape[-1] > size[1]
    frames = clip.transpose(0, 1)  # (T, C, H, W): time as the batch
    out = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return out.clamp_(0.0, 1.0).transpose(0, 1)


def resize_short_side(clip: Tensor, short_side: int) -> Tensor:
    """Resize so that the shorter side is ``short_side``, keeping the aspect ratio (mmaction ``Resize(-1, s)``)."""
    height, width = clip.shape[-2:]
    if height <= width:
        size = (short_side, max(1, round(width * short_side / height)))
    else:
        size = (max(1, round(height * short_side / width)), short_side)
    return resize_clip(clip, size)


def center_crop_clip(clip: Tensor, size: int) -> Tensor:
    """Central (size × size) crop of every frame."""
    height, width = clip.shape[-2:]
    if height < size or width < size:
        raise DataError(f"clip of {height}×{width} pixels is smaller than the crop {size}×{size}")
    top, left = (height - size) // 2, (width - size) // 2
    return clip[..., top : top + size, left : left + size]


def three_crop_clip(clip: Tensor, size: int) -> Tensor:
    """Three (size × size) crops along the longer side (start, centre, end), as mmaction ``ThreeCrop``.

    (C, T, H, W) → (3, C, T, size, size).
    """
    height, width = clip.shape[-2:]
    if height < size or width < size:
        raise DataError(f"clip of {height}×{width} pixels is smaller than the crop {size}×{size}")
    if width >= height:
        top = (height - size) // 2
        lefts = [0, (width - size) // 2, width - size]
        crops = [clip[..., top : top + size, left : left + size] for left in lefts]
    else:
        left = (width - size) // 2
        tops = [0, (height - size) // 2, height - size]
        crops = [clip[..., top : top + size, left : left + size] for top in tops]
    return torch.stack(crops)


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop with area fraction in ``scale`` and aspect ratio in ``ratio``.

    Ten tries, then the whole frame (the mmaction ``RandomResizedCrop`` defaults).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(height - h + 1, (1,), generator=generator))
            left = int(torch.randint(width - w + 1, (1,), generator=generator))
            return top, left, h, w
    return 0, 0, height, width


@dataclass
class VideoTrainTransform:
    """Training clip augmentation (spec §3.1): short side → random resized crop → resize to size → flip.

    ``short_side=None`` skips the first resize, ``scale=None`` skips the random crop, ``hflip=0`` never flips
    (use 0 when a flip changes the label, as for ``moving_digits`` motion). (C, T, H, W) → (C, T, size, size).
    """

    size: int = 224
    short_side: int | None = 256
    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __call__(self, clip: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.short_side is not None:
            clip = resize_short_side(clip, self.short_side)
        if self.scale is not None:
            top, left, h, w = random_resized_crop_box(clip.shape[-2], clip.shape[-1], self.scale, self.ratio, generator)
            clip = clip[..., top : top + h, left : left + w]
        clip = resize_clip(clip, (self.size, self.size))
        if self.hflip > 0 and float(torch.rand((), generator=generator)) < self.hflip:
            clip = clip.flip(-1)
        return clip.contiguous()


@dataclass
class VideoTestTransform:
    """Test clip views (spec §3.1): short side → ``num_crops`` = 1 (centre) or 3 (``ThreeCrop``) crops of ``size``.

    (C, T, H, W) → (num_crops, C, T, size, size).
    """

    size: int = 224
    short_side: int | None = 224
    num_crops: int = 1

    def __post_init__(self) -> None:
        if self.num_crops not in (1, 3):
            raise DataError(f"num_crops must be 1 (centre crop) or 3 (three crops), got {self.num_crops}")

    def __call__(self, clip: Tensor) -> Tensor:
        if self.short_side is not None:
            clip = resize_short_side(clip, self.short_side)
        if self.num_crops == 3:
            return three_crop_clip(clip, self.size).contiguous()
        return center_crop_clip(clip, self.size).unsqueeze(0).contiguous()


# ------------------------------------------------------------------------------------------------------------
# Annotation lists and the file-backed data set


@dataclass(frozen=True)
class VideoRecord:
    """One line of an annotation list: a video file or a frame folder, and its class index."""

    path: Path
    label: int


_HEADER_WORDS = {"path", "video", "filename", "file", "label", "class", "frame_dir", "total_frames", "num_frames"}


def read_annotation_file(
    annotation_file: str | Path, root: str | Path | None = None, classes: Sequence[str] | None = None
) -> tuple[list[VideoRecord], list[str]]:
    """Parse a Kinetics-style list: one ``path label`` per line (TXT, whitespace) or ``path,label`` (CSV).

    mmaction's frame lists ``folder num_frames label`` are accepted too (the count is re-read from the folder).
    A first line made of column names (``path,label``) is skipped. Labels are class indices, or class names mapped
    to indices in ``classes`` order (default: sorted names). Paths are relative to ``root`` (default: the folder of
    the annotation file). Returns (records, class names).
    """
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise DataError(f"{annotation_file}: annotation file not found (expected lines 'path label' or 'path,label')")
    base = Path(root) if root is not None else annotation_file.parent
    with annotation_file.open(newline="") as handle:
        text = handle.read()
    rows: list[tuple[int, list[str]]] = []
    lines = text.splitlines()
    is_csv = annotation_file.suffix.lower() == ".csv" or any("," in line for line in lines[:5])
    parsed = csv.reader(lines) if is_csv else (line.split() for line in lines)
    for number, fields in enumerate(parsed, start=1):
        fields = [f.strip() for f in fields if f.strip()]
        if not fields or fields[0].startswith("#"):
            continue
        if not rows and {f.lower() for f in fields} & _HEADER_WORDS:
            continue  # a header row
        if len(fields) not in (2, 3):
            raise DataError(
                f"{annotation_file}:{number}: expected 'path label' or 'path num_frames label', got {fields}"
            )
        rows.append((number, fields))
    if not rows:
        raise DataError(f"{annotation_file}: no entries (expected lines 'path label' or 'path,label')")
    labels = [fields[-1] for _, fields in rows]
    numeric = [label.lstrip("-").isdigit() for label in labels]
    if all(numeric):
        indices = [int(label) for label in labels]
        bad = [(n, i) for (n, _), i in zip(rows, indices) if i < 0]
        if bad:
            raise DataError(f"{annotation_file}:{bad[0][0]}: negative label {bad[0][1]}")
        names = list(classes) if classes is not None else [str(i) for i in range(max(indices) + 1)]
        too_big = [(n, i) for (n, _), i in zip(rows, indices) if i >= len(names)]
        if too_big:
            raise DataError(
                f"{annotation_file}:{too_big[0][0]}: label {too_big[0][1]} outside the {len(names)} classes"
            )
    elif not any(numeric):
        names = list(classes) if classes is not None else sorted(set(labels))
        lookup = {name: i for i, name in enumerate(names)}
        unknown = [(n, fields[-1]) for n, fields in rows if fields[-1] not in lookup]
        if unknown:
            raise DataError(f"{annotation_file}:{unknown[0][0]}: class {unknown[0][1]!r} is not among {names[:10]}")
        indices = [lookup[label] for label in labels]
    else:
        first = rows[numeric.index(False)][0]
        raise DataError(f"{annotation_file}:{first}: labels mix class indices and class names")
    records = [VideoRecord(base / fields[0], index) for (_, fields), index in zip(rows, indices)]
    return records, names


class VideoDataset(Dataset[dict[str, Any]]):
    """Videos (files decoded with PyAV, or frame folders) listed in an annotation file.

    Args:
        annotation_file: CSV/TXT list (see :func:`read_annotation_file`).
        root: folder the listed paths are relative to (default: the annotation file's folder).
        clip_len, frame_interval: frames per clip and the stride between them (DualFormer K400: 32 × 2).
        num_clips: temporal clips per video (1 for training; 4 for the Kinetics test protocol).
        test_mode: uniform deterministic clips and ``transform`` returning (S, C, T, H, W) crops; items then hold
            (num_clips·S, 3, T, H, W) views, clip-major (or (3, T, H, W) when there is one view).
        transform: a clip transform (:class:`VideoTrainTransform` / :class:`VideoTestTransform`); None keeps the
            decoded size.
        skip_corrupt: False (default): a missing or undecodable video raises :class:`DataError` naming it.
            True: it is skipped with a warning (missing files at construction, corrupt ones when read, replaced by
            the next readable item) and counted in ``num_skipped`` / ``skipped_paths`` (per process).
        mean, std: per-channel statistics for the model's normalisation wrapper (default ImageNet).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        root: str | Path | None = None,
        clip_len: int = 32,
        frame_interval: int = 2,
        num_clips: int = 1,
        test_mode: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
        classes: Sequence[str] | None = None,
        skip_corrupt: bool = False,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        records, self.classes = read_annotation_file(annotation_file, root, classes)
        self.annotation_file = Path(annotation_file)
        self.clip_len = clip_len
        self.frame_interval = frame_interval
        self.num_clips = num_clips
        self.test_mode = test_mode
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.num_classes = len(self.classes)
        self.skipped_paths: list[Path] = []
        missing = [r for r in records if not r.path.exists()]
        if missing:
            listed = ", ".join(str(r.path) for r in missing[:5]) + (" ..." if len(missing) > 5 else "")
            if not skip_corrupt:
                raise DataError(
                    f"{self.annotation_file}: {len(missing)} listed video(s) not found: {listed} "
                    f"(pass skip_corrupt=True to skip them)"
                )
            warnings.warn(f"{self.annotation_file}: skipping {len(missing)} missing video(s): {listed}", stacklevel=2)
            self.skipped_paths.extend(r.path for r in missing)
            records = [r for r in records if r.path.exists()]
        if not records:
            raise DataError(f"{self.annotation_file}: no readable video listed")
        self.records = records
        self.targets = [r.label for r in records]

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_paths)

    def __len__(self) -> int:
        return len(self.records)

    def load_clips(self, path: Path) -> Tensor:
        """Decode the sampled clips of one video → float (num_clips, 3, clip_len, H, W) in [0, 1]."""
        if path.is_dir():
            num_frames = len(list_frame_files(path))
            reader: Callable[[Path, Sequence[int]], Tensor] = read_frame_folder
        else:
            num_frames = count_video_frames(path)
            reader = decode_video_frames
        indices = sample_clip_indices(num_frames, self.clip_len, self.frame_interval, self.num_clips, self.test_mode)
        frames = reader(path, indices.flatten().tolist())  # (num_clips·clip_len, H, W, 3)
        return frames_to_clip(frames).unflatten(1, (self.num_clips, self.clip_len)).transpose(0, 1)

    def _views(self, clips: Tensor) -> Tensor:
        views = []
        for clip in clips:
            out = self.transform(clip) if self.transform is not None else clip
            views.append(out if out.dim() == 5 else out.unsqueeze(0))
        stacked = torch.cat(views)
        return stacked[0] if stacked.shape[0] == 1 else stacked

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                return {"video": self._views(self.load_clips(record.path)), "label": record.label}
            except DataError as exc:
                if not self.skip_corrupt:
                    raise
                warnings.warn(f"skipping unreadable video: {exc}", stacklevel=2)
                self.skipped_paths.append(record.path)
        raise DataError(f"{self.annotation_file}: no listed video could be decoded")


# ------------------------------------------------------------------------------------------------------------
# moving_digits (spec §6): a digit sprite moving 2 px per frame in one of four directions on a torus.

MOTION_CLASSES = ["left", "right", "up", "down"]
# (dy, dx) per frame, in units of ``speed`` pixels, in MOTION_CLASSES order.
_MOTION_STEPS = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]], dtype=np.int64)
MOVING_DIGITS_VERSION = 1
MOVING_DIGITS_SEED = 0


def render_moving_digits(
    sprites: np.ndarray, motions: np.ndarray, starts: np.ndarray, num_frames: int, canvas: int, speed: int
) -> np.ndarray:
    """Render clips of sprites moving on a torus.

    Args:
        sprites: (N, s, s) float in [0, 1], the digit of each clip.
        motions: (N,) index into ``MOTION_CLASSES``.
        starts: (N, 2) top-left (y, x) of the sprite in frame 0, in [0, canvas).
    Returns:
        uint8 (N, num_frames, canvas, canvas): frame t shows the sprite at (start + t·speed·step) mod canvas.
    """
    n, s = sprites.shape[0], sprites.shape[1]
    if s > canvas:
        raise DataError(f"digit size {s} is larger than the canvas {canvas}")
    board = np.zeros((n, canvas, canvas), dtype=np.uint8)
    board[:, :s, :s] = np.round(np.clip(sprites, 0.0, 1.0) * 255.0).astype(np.uint8)
    offsets = starts[:, None, :] + speed * np.arange(num_frames)[None, :, None] * _MOTION_STEPS[motions][:, None, :]
    offsets %= canvas  # (N, T, 2) top-left of the sprite in each frame
    # Frame pixel (y, x) shows board pixel ((y - oy) mod c, (x - ox) mod c): on the board tiled 2 × 2 that is the
    # c × c window starting at ((c - oy) mod c, (c - ox) mod c), read as a strided view without copying the board.
    windows = np.lib.stride_tricks.sliding_window_view(np.tile(board, (1, 2, 2)), (canvas, canvas), axis=(1, 2))
    top, left = (canvas - offsets[..., 0]) % canvas, (canvas - offsets[..., 1]) % canvas
    return windows[np.arange(n)[:, None], top, left]  # (N, T, c, c)


@functools.lru_cache(maxsize=4)
def _moving_digits_arrays(
    split: str, num_frames: int, canvas: int, digit_size: int, speed: int, clips_per_digit: int, seed: int
) -> dict[str, Tensor]:
    """The videos of one split and their labels; cached in process memory (do not modify the tensors)."""
    from vitlab.data.digits import load_digits_split

    digits = load_digits_split(img_size=digit_size)
    images = digits.train_images if split == "train" else digits.test_images
    labels = digits.train_labels if split == "train" else digits.test_labels
    sprites = images[:, 0].numpy().astype(np.float32)  # (D, s, s)
    # One seeded stream per split: motions and starts are the same on every machine.
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    digit_index = np.repeat(np.arange(sprites.shape[0]), clips_per_digit)
    motions = rng.integers(0, len(MOTION_CLASSES), size=digit_index.shape[0])
    starts = rng.integers(0, canvas, size=(digit_index.shape[0], 2))
    videos = render_moving_digits(sprites[digit_index], motions, starts, num_frames, canvas, speed)
    return {
        "videos": torch.from_numpy(np.ascontiguousarray(videos)),
        "motion": torch.from_numpy(motions.astype(np.int64)),
        "digit": labels[torch.from_numpy(digit_index)].long(),
        "starts": torch.from_numpy(starts.astype(np.int64)),
    }


def moving_digits_stats(canvas: int = 32, digit_size: int = 16) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the training videos, computed exactly from the training sprites.

    On a torus every frame shows the whole sprite once, so the pixel statistics of any frame of any clip are those
    of its (uint8-quantised) sprite on a ``canvas``² board, whatever the motion and start.
    """
    from vitlab.data.digits import load_digits_split

    sprites = load_digits_split(img_size=digit_size).train_images[:, 0].double()
    quantised = torch.round(sprites * 255.0) / 255.0
    pixels = canvas * canvas
    mean = float(quantised.sum() / (sprites.shape[0] * pixels))
    second_moment = float(quantised.square().sum() / (sprites.shape[0] * pixels))
    std = math.sqrt(max(second_moment - mean * mean, 0.0))
    return (mean,) * 3, (std,) * 3


class MovingDigits(Dataset[dict[str, Any]]):
    """``moving_digits`` (spec §6): real handwritten digits moving on a torus; labels ``motion`` or ``digit``.

    Each video has ``num_frames`` frames of ``canvas``² pixels: a digit of the fixed digits split (train videos from
    train digits only), up-sampled to ``digit_size``², starts at a uniform random position and moves ``speed`` px
    per frame left, right, up or down with toroidal wrap-around. Because the start is uniform, a clip's set of
    frames is distributed like that of its time reversal (the opposite motion): a frame-order-invariant model is at
    chance (25%) on ``motion``.

    Items are ``clip_len``-frame clips (every ``frame_interval`` frames) sampled from a video: one random clip for
    training, ``num_clips`` uniform clips in test mode (then ``video`` is (num_clips, 3, T, H, W)). Generated
    deterministically in about 0.2 s (less than reading a 94 MB cache file back and verifying it), so the set is kept
    in process memory only, like ``digits``. ``mean``/``std`` are those of the training videos.
    """

    def __init__(
        self,
        split: str = "train",
        label: str = "motion",
        num_frames: int = 16,
        clip_len: int = 8,
        frame_interval: int = 1,
        num_clips: int = 1,
        test_mode: bool | None = None,
        canvas: int = 32,
        digit_size: int = 16,
        speed: int = 2,
        clips_per_digit: int | None = None,
        transform: ClipTransform | None = None,
        seed: int = MOVING_DIGITS_SEED,
    ) -> None:
        if split not in ("train", "test"):
            raise DataError(f"moving_digits split must be 'train' or 'test', got {split!r}")
        if label not in ("motion", "digit"):
            raise DataError(f"moving_digits label must be 'motion' or 'digit', got {label!r}")
        if clip_len * frame_interval > num_frames:
            raise DataError(
                f"moving_digits clips of {clip_len} frames every {frame_interval} do not fit in {num_frames} frames"
            )
        # The spec's plan: 4 clips per training digit, one video per test digit (viewed as 2 temporal clips).
        clips_per_digit = clips_per_digit if clips_per_digit is not None else (4 if split == "train" else 1)
        self.split = split
        self.label = label
        self.clip_len = clip_len
        self.frame_interval = frame_interval
        self.num_clips = num_clips
        self.test_mode = (split == "test") if test_mode is None else test_mode
        self.transform = transform
        arrays = _moving_digits_arrays(split, num_frames, canvas, digit_size, speed, clips_per_digit, seed)
        self.videos = arrays["videos"]  # (N, num_frames, canvas, canvas) uint8, shared: never modified
        self.motions: list[int] = arrays["motion"].tolist()
        self.digits: list[int] = arrays["digit"].tolist()
        self.targets: list[int] = self.motions if label == "motion" else self.digits
        self.classes = list(MOTION_CLASSES) if label == "motion" else [str(d) for d in range(10)]
        self.num_classes = len(self.classes)
        self.mean, self.std = moving_digits_stats(canvas, digit_size)

    def __len__(self) -> int:
        return self.videos.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = self.videos[index]  # (num_frames, H, W) uint8
        indices = sample_clip_indices(
            video.shape[0], self.clip_len, self.frame_interval, self.num_clips, self.test_mode
        )
        clips = video[indices].float().div_(255.0)  # (num_clips, T, H, W)
        clips = clips.unsqueeze(1).expand(-1, 3, -1, -1, -1).contiguous()  # grey → 3 channels
        if self.transform is not None:
            clips = torch.stack([self.transform(clip) for clip in clips])
        return {"video": clips[0] if clips.shape[0] == 1 else clips, "label": self.targets[index]}
