"""RIFT on a tiny random BERT: the loss terms, ASCC (post-LayerNorm hull, mode restored, allowed positions only, no
parameter gradients), the frozen teacher, weight decay groups, and train / eval / attack from the command line."""

from __future__ import annotations

import json

import pytest
import torch

from vitlab.cli import main
from vitlab.config import load_config
from vitlab.data.text import collate_groups
from vitlab.methods.base import DataInfo
from vitlab.methods.rift import RIFT, ascc_weights, trim_batch

RECIPE = "recipes/rift/minilm_synth_sentiment.yaml"
TINY = ["method.random_config.hidden_size=32", "method.random_config.num_hidden_layers=2",
        "method.random_config.num_attention_heads=2", "method.random_config.intermediate_size=64",
        "method.random_config.max_position_embeddings=64", "method.proj_hidden=16", "method.proj_dim=8",
        "method.head_hidden=16", "method.ascc_steps=2"]


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(RECIPE, TINY)
    datasets = RIFT.build_datasets(cfg)
    torch.manual_seed(0)
    method = RIFT(cfg, DataInfo(2, 3, 32, (0.0,), (1.0,)))
    batch = collate_groups([datasets["train"][i] for i in range(4)])
    return method, batch


def test_rift_loss_terms_gradients_and_frozen_teacher(setup):
    method, batch = setup
    method.train()
    out = method(batch)
    assert set(out) >= {"ce", "kl", "adv_ce", "mi", "loss"} and torch.isfinite(out["loss"])
    m = method.mcfg
    expected = m.w_clean * out["ce"] + m.w_kl * out["kl"] + m.w_mi * out["mi"]
    assert torch.allclose(out["loss"], expected)
    method.zero_grad()
    out["loss"].backward()
    assert method.model.plm.embeddings.word_embeddings.weight.grad is not None
    assert all(p.grad is not None for p in method.proj_student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert not method.teacher.training  # frozen copy stays in eval mode
    groups = method.param_groups()
    assert groups[0]["weight_decay"] == pytest.approx(2e-4) and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.model.plm.parameters()}
    method.zero_grad()


def test_ascc_restores_mode_touches_no_parameter_and_respects_positions(setup):
    method, batch = setup
    model = method.model
    b = trim_batch(batch)
    model.train()
    w = ascc_weights(model, b, "kl", steps=2)
    assert model.training and model.plm.encoder.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # only the slot logits were differentiated
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:2]))
    fixed = b["sub_mask"][..., 1:].sum(-1) == 0  # positions without synonyms (and padding): slot 0 only
    assert torch.all(w[..., 0][fixed] == 1.0)
    model.eval()
    assert not model.training


def test_hull_is_over_post_layernorm_embedding_outputs(setup):
    method, batch = setup
    model = method.model.eval()
    b = trim_batch(batch)
    seen = []
    hook = model.plm.encoder.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0] if args else
                                                       kwargs["hidden_states"]), with_kwargs=True)
    try:
        only_original = b["sub_mask"].clone()
        only_original[..., 1:] = 0
        w = ascc_weights(model, {**b, "sub_mask": only_original}, "ce", steps=1)
        adv = torch.einsum("bls,blsd->bld", w, model.slot_embeddings(b["sub_ids"], b["token_type_ids"]))
        with torch.no_grad():
            clean_emb = model.embed(b["input_ids"], b["token_type_ids"])  # word + position + type, LayerNorm
            seen.clear()
            feats = model.features_from_embeddings(adv, b["attention_mask"], b["input_ids"])
        assert torch.allclose(seen[0], adv)  # the encoder received exactly the hull combination
        assert torch.allclose(adv, clean_emb, atol=1e-6)  # one valid slot: the clean embedding
        with torch.no_grad():
            assert torch.allclose(feats, model.features(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
                                  atol=1e-5)
        ln = model.plm.embeddings.LayerNorm
        assert torch.allclose(clean_emb.mean(-1), ln.bias.mean().expand_as(clean_emb[..., 0]), atol=1e-4)
    finally:
        hook.remove()


def test_standard_baseline_runs_no_attack_and_builds_no_teacher():
    cfg = load_config(RECIPE, TINY + ["method.w_kl=0", "method.w_mi=0"])
    method = RIFT(cfg, DataInfo(2, 3, 32, (0.0,), (1.0,)))
    assert not hasattr(method, "teacher") and not method.mcfg.adversarial


def _train_tiny(tmp_path, capsys, extra=()):
    args = ["train", "-c", RECIPE, "--set", f"out_dir={tmp_path}", "--set", "name=tiny", "--set", "train.max_steps=2",
            "--set", "data.batch_size=4", "--set", "train.progress=false"] + [x for s in TINY for x in ("--set", s)]
    assert main(args + list(extra)) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"top1", "val_top1", "select"} <= set(metrics)
    ckpt = tmp_path / "tiny" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    return args, ckpt


def test_train_then_pwws_and_genetic_from_the_command_line(tmp_path, capsys):
    _, ckpt = _train_tiny(tmp_path, capsys)
    for attack, extra in (("pwws", []), ("genetic", ["--population", "4", "--iterations", "2"])):
        out = tmp_path / f"{attack}.json"
        assert main(["attack", "--ckpt", str(ckpt), "--attack", attack, "--n", "3", "--out", str(out)] + extra) == 0
        report = json.loads(out.read_text())
        assert report["n"] == 3 and 0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1
    assert json.loads((tmp_path / "genetic.json").read_text())["lm_constraint"] == "off"


@pytest.mark.slow
def test_resume_eval_exact_and_ascc_from_the_command_line(tmp_path, capsys):
    args, ckpt = _train_tiny(tmp_path, capsys)
    assert main(args + ["--set", "train.max_steps=3", "--resume"]) == 0  # continues from step 2
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    assert main(["eval", "--ckpt", str(ckpt)]) == 0
    for attack, extra in (("exact", []), ("ascc", [])):
        out = tmp_path / f"{attack}.json"
        assert main(["attack", "--ckpt", str(ckpt), "--attack", attack, "--n", "3", "--out", str(out)] + extra) == 0
        report = json.loads(out.read_text())
        assert report["n"] == 3 and 0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert main(["train", "-c", RECIPE, "--set", f"method.backbone={folder}", "--set", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: method.backbone:") and "no weights" in err and len(err.splitlines()) == 1
    assert main(["train", "-c", RECIPE, "--set", "data.name=digits", "--set", f"out_dir={tmp_path}"]) == 2
    assert "data.name" in capsys.readouterr().err
