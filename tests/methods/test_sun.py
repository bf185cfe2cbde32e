"""SUN's three registered stages on the engine (specs/sun.md §2, §6): 1-step runs of each, teacher-loading errors,
Meta-Baseline's γ-independent accuracy, chance accuracy on random features, and a backbone without a patch map."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models import register_model
from torch import nn

from vitlab.cli import main
from vitlab.config import ConfigError, load_config
from vitlab.data.episodes import EpisodeShape
from vitlab.engine.checkpoint import load_checkpoint, load_eval_model, save_checkpoint
from vitlab.engine.trainer import train
from vitlab.evaluation.episodes import evaluate_episodes
from vitlab.methods.base import DataInfo, build_method
from vitlab.methods.sun import SUN, CosinePrototypes, EpisodeDataset

# 1 step per stage, a few evaluation episodes, 16-image batches
FAST = ["data.batch_size=16", "data.eval_batch_size=512", "method.fewshot.episodes=10", "train.max_steps=1",
        "train.progress=false"]


def _run(recipe: str, tmp_path: Path, name: str, *sets: str) -> tuple[dict[str, float], Path]:
    cfg = load_config(f"recipes/sun/{recipe}", [f"out_dir={tmp_path}", f"name={name}", *FAST, *sets])
    metrics = train(cfg)
    return metrics, tmp_path / name / "last.ckpt"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sun")
    metrics, ckpt = _run("digits_teacher.yaml", tmp, "teacher")
    assert set(metrics) >= {"fs1_acc", "fs1_ci95", "fs5_acc", "fs5_ci95"}
    assert 0 <= metrics["fs1_acc"] <= 100 and metrics["fs1_ci95"] > 0
    return ckpt


def test_sun_and_meta_baseline_stages_run_from_the_teacher(teacher: Path, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in load_checkpoint(teacher)["method"].items()}
    metrics, student = _run("digits_sun.yaml", tmp_path, "sun", f"method.teacher_ckpt={teacher}")
    assert 0 <= metrics["fs1_acc"] <= 100 and metrics["fs5_ci95"] > 0
    state = load_checkpoint(student)["method"]
    # the teacher inside the SUN checkpoint is the frozen stage-1 model; the student is a new model, not a copy
    for key, value in before.items():
        assert torch.equal(state["teacher." + key[len("model."):]], value), key
    assert not torch.equal(state["student.model.model.head.weight"], before["model.model.head.weight"])
    assert state["student.local_head.weight"].shape[0] == 6  # C + 1 = 5 base digits + background
    metrics, meta = _run("digits_meta.yaml", tmp_path, "meta", f"method.init_ckpt={student}",
                         "data.batch_size=2", "method.episodes_per_epoch=4")
    assert 0 <= metrics["fs1_acc"] <= 100
    # the meta-tuned encoder starts from the SUN student: after one SGD step at lr 1e-3 it is close to, not equal to it
    meta_state = load_checkpoint(meta)["method"]
    w0, w1 = state["student.model.model.head.weight"], meta_state["net.model.model.head.weight"]
    assert torch.equal(w0, w1)  # the class head gets no gradient from cosine prototypes
    assert meta_state["net.temperature"].shape == () and float(meta_state["net.temperature"]) != 10.0
    assert isinstance(load_eval_model(meta), nn.Module)


def test_missing_teacher_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^method\.teacher_ckpt: .*nowhere\.ckpt not found"):
        _run("digits_sun.yaml", tmp_path, "sun", f"method.teacher_ckpt={tmp_path / 'nowhere.ckpt'}")


def test_teacher_for_another_class_count_names_both(tmp_path: Path) -> None:
    cfg = load_config("recipes/sun/digits_teacher.yaml", ["data.name=digits"])
    info = DataInfo(num_classes=10, channels=3, img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    path = tmp_path / "teacher10.ckpt"
    save_checkpoint(path, cfg, info, build_method(cfg, info).state_dict())
    with pytest.raises(ConfigError) as caught:
        _run("digits_sun.yaml", tmp_path, "sun", f"method.teacher_ckpt={path}")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("method.teacher_ckpt:")
    assert "has 10 classes" in message and "has 5" in message


def test_meta_baseline_accuracy_does_not_depend_on_gamma() -> None:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    support, query = torch.rand(3, 5 * 2, 3, 8, 8), torch.rand(3, 5 * 4, 3, 8, 8)

    class Wrapped(nn.Module):  # a classifier-like encoder whose "model" gives a (B, 8, 8, 8) map
        def __init__(self) -> None:
            super().__init__()
            self.model = encoder

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return encoder(x)

    encoder.forward_features = encoder.forward  # type: ignore[method-assign]
    net = CosinePrototypes(Wrapped(), temperature=10.0)
    logits10 = net(support, query, ways=5)
    net.temperature.data.fill_(1.0)
    logits1 = net(support, query, ways=5)
    assert torch.allclose(logits10, 10 * logits1, atol=1e-5)
    assert torch.equal(logits10.argmax(-1), logits1.argmax(-1))
    labels = torch.arange(5).repeat_interleave(4).expand(3, -1).flatten()
    loss10 = nn.functional.cross_entropy(logits10.detach().flatten(0, 1), labels)
    loss1 = nn.functional.cross_entropy(logits1.detach().flatten(0, 1), labels)
    assert abs(loss10.item() - loss1.item()) > 1e-3  # γ matters only for the loss


def test_random_features_give_chance_accuracy() -> None:
    torch.manual_seed(0)
    features, labels = torch.randn(500, 32), torch.arange(10).repeat_interleave(50)
    result = evaluate_episodes(features, labels, EpisodeShape(5, 1, 15), episodes=2000, seed=12345)["cosine"]
    assert abs(result.mean - 20.0) < 3 * result.ci95 + 0.5


def test_episode_dataset_items_are_whole_episodes() -> None:
    class Base:
        targets = [c for c in range(6) for _ in range(8)]
        classes = [str(c) for c in range(6)]

        def __getitem__(self, i: int) -> dict[str, object]:
            return {"image": torch.full((1, 2, 2), float(self.targets[i])), "label": self.targets[i]}

    data = EpisodeDataset(Base(), ways=5, shots=2, queries=3, episodes=7, seed=0)
    torch.manual_seed(1)
    item = data[0]
    assert len(data) == 7 and item["support"].shape == (10, 1, 2, 2) and item["query"].shape == (15, 1, 2, 2)
    support_class = item["support"][:, 0, 0, 0].view(5, 2)
    query_class = item["query"][:, 0, 0, 0].view(5, 3)
    assert (support_class == support_class[:, :1]).all() and (query_class == support_class[:, :1]).all()
    assert len(set(support_class[:, 0].tolist())) == 5
    torch.manual_seed(1)
    assert torch.equal(data[3]["query"], item["query"])  # the episode is a function of the seeded generator


class _PooledOnly(nn.Module):
    """A timm-contract model whose forward_features is already pooled: no final patch map."""

    def __init__(self, num_classes: int = 5, in_chans: int = 3, **_: object) -> None:
        super().__init__()
        self.num_classes, self.num_features = num_classes, 8
        self.conv = nn.Conv2d(in_chans, 8, 3)
        self.head = nn.Linear(8, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


if not timm.is_model("pooled_only_sun"):
    @register_model
    def pooled_only_sun(pretrained: bool = False, **kwargs: object) -> _PooledOnly:
        return _PooledOnly(**kwargs)  # type: ignore[arg-type]


def test_backbone_without_patch_map_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "-c", "recipes/sun/digits_sun.yaml", "--set", f"out_dir={tmp_path}",
                 "--set", "model.name=pooled_only_sun", "--set", "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: model.name: pooled_only_sun has no final patch map") and err.count("\n") == 1
    assert not (tmp_path / "sun_digits_sun" / "last.ckpt").exists()


def test_top_k_must_be_below_the_class_count(teacher: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^method\.top_k: got 5, expected fewer than the 5 base classes"):
        _run("digits_sun.yaml", tmp_path, "sun", f"method.teacher_ckpt={teacher}", "method.top_k=5")
    assert SUN.monitor == ("fs1_acc", True)


@pytest.mark.parametrize("recipe", sorted(p.name for p in Path("recipes/sun").glob("*.yaml")))
def test_every_sun_recipe_loads_and_validates(recipe: str) -> None:
    cfg = load_config(f"recipes/sun/{recipe}")
    assert cfg.method.name in ("sun_teacher", "sun", "meta_baseline")
    if recipe.startswith(("mini", "tiered")):
        assert cfg.model.name == "visformer_micro_80" and cfg.data.img_size == 80


@pytest.mark.slow  # two 12.5M-parameter builds at 80 px: ~10 s on a free core
def test_full_scale_recipe_steps_on_a_tiny_mini_imagenet(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    for stem, wnids in (("train", ["n01", "n02"]), ("val", ["n03", "n04"]), ("test", ["n05", "n06"])):
        lines = ["filename,label"]
        for k, wnid in enumerate(wnids):
            for i in range(3):
                name = f"{wnid}{i:08d}.jpg"
                Image.new("RGB", (84, 84), (40 * k + 20 * i, 90, 200 - 50 * k)).save(tmp_path / "images" / name)
                lines.append(f"{name},{wnid}")
        (tmp_path / f"{stem}.csv").write_text("\n".join(lines) + "\n")
    tiny = [f"data.root={tmp_path}", "data.batch_size=2", "data.num_workers=0", "train.precision=32-true",
            "method.fewshot.ways=2", "method.fewshot.shots=[1]", "method.fewshot.queries=1",
            "method.fewshot.episodes=2"]
    metrics, teacher = _run("mini_teacher.yaml", tmp_path, "teacher", *tiny)
    assert set(metrics) == {"fs1_acc", "fs1_ci95"}
    metrics, _ = _run("mini_sun.yaml", tmp_path, "sun", *tiny, f"method.teacher_ckpt={teacher}", "method.top_k=1")
    assert 0 <= metrics["fs1_acc"] <= 100
