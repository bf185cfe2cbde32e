"""The registered video sets through ``build_dataset``: ``moving_digits`` and ``video_folder`` (tiny mp4s)."""

from __future__ import annotations

import pytest
import torch

from vitlab.config import ConfigError, load_config
from vitlab.data import DataError, build_dataset, dataset_names


def data_cfg(*overrides: str):
    return load_config(None, list(overrides)).data



def test_video_sets_are_registered():
    assert {"moving_digits", "video_folder"} <= set(dataset_names())


def test_moving_digits_through_build_dataset_train_and_multiview_test():
    cfg = data_cfg("data.name=moving_digits", "data.video.num_clips=2")
    train, test = build_dataset(cfg, "train", train=True), build_dataset(cfg, "test", train=False)
    assert len(train) == 4 * 1438 and len(test) == 359  # 4 videos per training digit, 1 per test digit
    assert train.num_classes == 4 and train.classes == ["left", "right", "up", "down"]
    item = train[0]
    assert item["video"].shape == (3, 8, 32, 32) and 0 <= item["label"] < 4
    views = test[0]["video"]
    assert views.shape == (2, 3, 8, 32, 32)
    # The two test clips of a 16-frame video are frames 0-7 and 8-15 of the same motion: the second clip is the
    # first one shifted by 8 frames x 2 px along the motion.
    assert not torch.equal(views[0], views[1])
    assert train.mean == test.mean and len(train.mean) == 3


def test_moving_digits_label_digit_and_the_settings_reach_the_set():
    cfg = data_cfg("data.name=moving_digits", "data.video.label=digit", "data.video.clip_len=4",
                   "data.video.frame_interval=2", "data.video.train_videos_per_digit=1")
    train = build_dataset(cfg, "train", train=True)
    assert len(train) == 1438 and train.num_classes == 10
    assert train.targets == train.digits
    assert train[3]["video"].shape == (3, 4, 32, 32)


@pytest.mark.parametrize("override, key", [
    ("data.video.num_crops=3", "data.video.num_crops"),
    ("data.channels=1", "data.channels"),
    ("data.video.clip_len=0", "data.video.clip_len"),
    ("data.video.hflip=1.5", "data.video.hflip"),
    ("data.train_per_class=5", "data.train_per_class"),
])
def test_moving_digits_bad_settings_name_the_key(override, key):
    with pytest.raises(DataError, match=key.replace(".", r"\.")):
        build_dataset(data_cfg("data.name=moving_digits", override), "train", train=True)


def test_an_unknown_video_label_is_refused_by_the_schema():
    with pytest.raises(ConfigError, match=r"^data\.video\.label: got 'colour', expected one of motion, digit$"):
        data_cfg("data.name=moving_digits", "data.video.label=colour")


def test_video_folder_train_and_test_views(tmp_path, make_video_folder):
    classes = make_video_folder(tmp_path)
    cfg = data_cfg("data.name=video_folder", f"data.root={tmp_path}", "data.img_size=32",
                   "data.video.videos_dir=videos", "data.video.test_list=val.txt", "data.video.clip_len=4",
                   "data.video.frame_interval=2", "data.video.num_clips=3", "data.video.short_side=36",
                   "data.video.crop_scale=[0.5,1.0]", "data.video.hflip=0.5", "data.video.test_short_side=32")
    train = build_dataset(cfg, "train", train=True)
    test = build_dataset(cfg, "test", train=False)
    assert train.classes == test.classes == sorted(classes) and len(train) == 4 and len(test) == 2
    item = train[0]
    assert item["video"].shape == (3, 4, 32, 32) and item["label"] == classes["bright"]
    views = test[0]["video"]
    assert views.shape == (3, 3, 4, 32, 32) and test[0]["label"] == classes["dark"]
    # the decoded content is the written one (lossy codec): bright videos are bright, dark ones dark
    assert train[0]["video"].mean() > 0.6 and views.mean() < 0.3
    three = build_dataset(data_cfg(*[f"data.root={tmp_path}", "data.name=video_folder", "data.img_size=32",
                                     "data.video.videos_dir=videos", "data.video.test_list=val.txt",
                                     "data.video.num_clips=2", "data.video.num_crops=3"]), "test", train=False)
    assert three[1]["video"].shape == (6, 3, 8, 32, 32)  # 2 clips x 3 crops; short videos loop


def test_video_folder_errors_name_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data\.root"):
        build_dataset(data_cfg("data.name=video_folder"), "train", train=True)
    with pytest.raises(DataError, match=r"data\.video\.train_list.*train\.csv"):
        build_dataset(data_cfg("data.name=video_folder", f"data.root={tmp_path}"), "train", train=True)


def test_max_test_videos_keeps_the_first_test_videos_only():
    cfg = data_cfg("data.name=moving_digits", "data.video.max_test_videos=5", "data.video.num_clips=2")
    full = build_dataset(data_cfg("data.name=moving_digits", "data.video.num_clips=2"), "test", train=False)
    limited = build_dataset(cfg, "test", train=False)
    assert len(limited) == 5 and torch.equal(limited[4]["video"], full[4]["video"])
    assert len(build_dataset(cfg, "train", train=True)) == 4 * 1438  # training sets are never cut
