"""The video sets of ``build_dataset``: ``moving_digits`` (bundled, spec §6) and ``video_folder`` (a user's
Kinetics-style folder with CSV/TXT lists, spec §3.1). Settings come from the ``data.video`` section.

Items are ``{"video": (3, T, H, W) float in [0, 1], "label": int}``; a test item (``train=False``) of a set seen as
several views (``data.video.num_clips`` × ``num_crops`` > 1) holds ``(V, 3, T, H, W)``, folded by the multi-view
evaluator. Training items are one random clip (training augmentation when ``train=True``).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset, Subset

from vitlab.config import DataConfig, VideoConfig
from vitlab.data.build import register_dataset
from vitlab.data.dataset import DataError
from vitlab.data.video import (
    MovingDigits,
    VideoDataset,
    VideoTestTransform,
    VideoTrainTransform,
    read_annotation_file,
)

SPLITS = ("train", "test")


def check_video_config(cfg: DataConfig) -> VideoConfig:
    """Values of ``data.video`` that types alone cannot check; raises :class:`DataError` naming the key."""
    v = cfg.video
    positive = {"clip_len": v.clip_len, "frame_interval": v.frame_interval, "num_clips": v.num_clips,
                "num_frames": v.num_frames, "digit_size": v.digit_size,
                "train_videos_per_digit": v.train_videos_per_digit, "test_videos_per_digit": v.test_videos_per_digit}
    for key, value in positive.items():
        if value < 1:
            raise DataError(f"data.video.{key}: got {value}, expected an integer >= 1")
    if v.num_crops not in (1, 3):
        raise DataError(f"data.video.num_crops: got {v.num_crops}, expected 1 (centre crop) or 3 (ThreeCrop)")
    if not 0.0 <= v.hflip <= 1.0:
        raise DataError(f"data.video.hflip: got {v.hflip}, expected a probability in [0, 1]")
    if v.crop_scale is not None and not (len(v.crop_scale) == 2 and 0 < v.crop_scale[0] <= v.crop_scale[1] <= 1):
        raise DataError(f"data.video.crop_scale: got {v.crop_scale}, expected [min, max] with 0 < min <= max <= 1")
    for key in ("short_side", "test_short_side"):
        side = getattr(v, key)
        if side is not None and side < cfg.img_size:
            raise DataError(f"data.video.{key}: got {side}, expected null or a side >= data.img_size {cfg.img_size}")
    if cfg.channels != 3:
        raise DataError(f"data.channels: got {cfg.channels}, expected 3 for the video set {cfg.name!r}")
    if cfg.train_per_class is not None:
        raise DataError(f"data.train_per_class: not supported by the video set {cfg.name!r}; leave it null")
    if v.max_test_videos is not None and v.max_test_videos < 1:
        raise DataError(f"data.video.max_test_videos: got {v.max_test_videos}, expected null or an integer >= 1")
    return v


def _limit_test(dataset: Dataset, cfg: DataConfig, train: bool) -> Dataset:
    """The first ``data.video.max_test_videos`` videos of an evaluation set (quick checks); the set itself if null."""
    limit = cfg.video.max_test_videos
    if train or limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, list(range(limit)))


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"{name}: unknown split {split!r} (allowed: {', '.join(SPLITS)})")


def build_moving_digits(cfg: DataConfig, split: str, train: bool) -> Dataset:
    """``moving_digits``: videos of ``num_frames`` frames on an ``img_size``² torus; label ``motion`` or ``digit``.

    ``train=True``: one random ``clip_len``-frame clip per video; otherwise ``num_clips`` uniform clips (views).
    The training transform is only a flip (``data.video.hflip``; keep 0 for ``motion``: a flip swaps left and
    right). Training videos come from training digits only.
    """
    _check_split("moving_digits", split)
    v = check_video_config(cfg)
    if v.num_crops != 1:
        raise DataError("data.video.num_crops: moving_digits clips are the whole canvas; expected 1")
    if v.digit_size > cfg.img_size:
        raise DataError(f"data.video.digit_size: got {v.digit_size}, expected <= data.img_size {cfg.img_size}")
    transform = VideoTrainTransform(size=cfg.img_size, short_side=None, scale=None, hflip=v.hflip) if (
        train and v.hflip > 0) else None
    dataset = MovingDigits(
        split=split,
        label=v.label,
        num_frames=v.num_frames,
        clip_len=v.clip_len,
        frame_interval=v.frame_interval,
        num_clips=1 if train else v.num_clips,
        test_mode=not train,
        canvas=cfg.img_size,
        digit_size=v.digit_size,
        clips_per_digit=v.train_videos_per_digit if split == "train" else v.test_videos_per_digit,
        transform=transform,
    )
    return _limit_test(dataset, cfg, train)


def _list_path(root: Path, name: str, key: str) -> Path:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"data.video.{key}: annotation list {path} not found (lines 'path label' or 'path,label', "
                        "paths relative to data.root/data.video.videos_dir)")
    return path


def build_video_folder(cfg: DataConfig, split: str, train: bool) -> Dataset:
    """``video_folder``: a user's Kinetics-style set under ``data.root`` (spec §3.1).

    ``data.root/<data.video.train_list>`` and ``<test_list>`` list ``path label`` (TXT) or ``path,label`` (CSV)
    with paths relative to ``data.root/<videos_dir>``: video files (PyAV) or frame folders. Class names are taken
    from the training list, so both splits share one numbering. Training: one random clip, short side →
    random resized crop → ``img_size`` → flip. Test: ``num_clips`` uniform clips × ``num_crops`` crops of
    ``img_size`` after a short-side resize. ImageNet mean / std.
    """
    _check_split("video_folder", split)
    v = check_video_config(cfg)
    if cfg.root is None:
        raise DataError("data.root: video_folder needs the folder that holds the annotation lists "
                        f"({v.train_list}, {v.test_list}) and the videos")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root: folder {root} not found")
    videos_root = root / v.videos_dir
    train_list = _list_path(root, v.train_list, "train_list")
    _, classes = read_annotation_file(train_list, videos_root)
    annotation = train_list if split == "train" else _list_path(root, v.test_list, "test_list")
    if train:
        scale = (float(v.crop_scale[0]), float(v.crop_scale[1])) if v.crop_scale is not None else None
        transform = VideoTrainTransform(size=cfg.img_size, short_side=v.short_side, scale=scale, hflip=v.hflip)
        return VideoDataset(annotation, videos_root, v.clip_len, v.frame_interval, num_clips=1, test_mode=False,
                            transform=transform, classes=classes, skip_corrupt=v.skip_corrupt)
    test_transform = VideoTestTransform(size=cfg.img_size, short_side=v.test_short_side, num_crops=v.num_crops)
    dataset = VideoDataset(annotation, videos_root, v.clip_len, v.frame_interval, num_clips=v.num_clips,
                           test_mode=True, transform=test_transform, classes=classes, skip_corrupt=v.skip_corrupt)
    return _limit_test(dataset, cfg, train)


register_dataset("moving_digits", build_moving_digits)
register_dataset("video_folder", build_video_folder)
