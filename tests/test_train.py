"""The shared training loop on a tiny preset: files written, seeded runs bit-identical, resume exact, guards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import fit_killed_after_first_epoch, same_weights

from siamdiff.core.checkpoint import load_model, load_state
from siamdiff.core.errors import Interrupted, SiamdiffError
from siamdiff.data.datasets import load_sample
from siamdiff.similarity.task import SimilarityTask, recipe
from siamdiff.training import TrainOptions, fit


def _sets():
    data = load_sample("mnist")
    idx = torch.arange(len(data))
    return data.subset(idx[idx % 3 != 0]), data.subset(idx[idx % 3 == 0])


def _task(model="tiny", **kw):
    train, val = _sets()
    r = recipe("mnist", 1, 28, TrainOptions(model=model, epochs=2, batch_size=50, device="cpu", **kw))
    return SimilarityTask(r, train, val), r


def test_fit_writes_model_state_and_log(tmp_path):
    task, r = _task()
    history = fit(task, tmp_path)
    assert [h["epoch"] for h in history] == [1, 2]
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines == history
    assert all(0.0 <= h["val_recall_at_1"] <= 1.0 for h in history)
    net, meta = load_model(tmp_path / "model.safetensors", kind="similarity")
    cal = meta["extra"]["calibration"]
    assert cal["slope"] < 0  # larger distance, lower probability of "same"
    assert meta["extra"]["classes"] == [str(i) for i in range(10)]


def test_seeded_runs_are_bit_identical_on_cpu(tmp_path):
    for name in ("a", "b"):
        task, r = _task()
        fit(task, tmp_path / name)
    assert same_weights(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors")


@pytest.mark.parametrize("loss", ["supcon", "normsoftmax"])  # normsoftmax: its class proxies resume too
def test_resume_continues_exactly(tmp_path, loss):
    task, r = _task(loss=loss)
    fit(task, tmp_path / "full")

    fit_killed_after_first_epoch(_task(loss=loss)[0], tmp_path / "cut")
    history = fit(_task(loss=loss)[0], tmp_path / "cut", resume=True)
    assert [h["epoch"] for h in history] == [1, 2]
    assert same_weights(tmp_path / "full" / "model.safetensors", tmp_path / "cut" / "model.safetensors")


def test_normsoftmax_trains_proxies_that_stay_out_of_the_model_file(tmp_path):
    task, r = _task(loss="normsoftmax")
    assert r.loss.temperature == 0.05
    before = task.loss_module.weight.detach().clone()
    fit(task, tmp_path)
    assert not torch.equal(before, task.loss_module.weight.detach())  # optimised with the network
    net, _ = load_model(tmp_path / "model.safetensors", kind="similarity")
    assert set(net.state_dict()) == set(task.model.state_dict())  # the file is the embedding network alone


def test_fine_tuning_starts_at_the_model_and_its_proxies_at_class_mean_directions(tiny_model):
    from siamdiff.similarity.embed import embed
    from siamdiff.similarity.losses import normsoftmax_loss

    net, meta = load_model(tiny_model, kind="similarity")
    task, _ = _task(loss="normsoftmax")
    random_proxies = task.loss_module.weight.detach().clone()
    task.start_from(net, str(tiny_model), meta)
    assert all(torch.equal(a, b) for a, b in zip(task.model.state_dict().values(), net.state_dict().values()))
    emb = torch.from_numpy(embed(net, task.train_set.images))
    y = task.train_set.labels
    means = torch.stack([emb[y == k].mean(0) for k in range(10)])  # every sample class has < PROXY_IMAGES images
    assert torch.allclose(task.loss_module.weight.detach(), means / means.norm(dim=1, keepdim=True), atol=1e-5)
    # the trained embedding already fits these proxies far better than the random ones a fresh run starts with
    assert normsoftmax_loss(emb, y, task.loss_module.weight.detach()) < 0.5 * normsoftmax_loss(emb, y, random_proxies)
    assert task.init["from"] == str(tiny_model) and task.init["epochs"] == 1 and task.init["previous"] is None

    # a class with no training images (possible in a small folder dataset) keeps its random proxy, not a NaN
    train, val = _sets()
    options = TrainOptions(model="tiny", loss="normsoftmax", device="cpu")
    task = SimilarityTask(recipe("mnist", 1, 28, options), train.subset(torch.nonzero(train.labels != 3).flatten()), val)
    random_proxies = task.loss_module.weight.detach().clone()
    task.start_from(net, str(tiny_model), meta)
    assert torch.equal(task.loss_module.weight[3], random_proxies[3]) and torch.isfinite(task.loss_module.weight).all()
    assert not torch.equal(task.loss_module.weight[4], random_proxies[4])


def test_resumed_fine_tuning_keeps_its_start_without_being_told_again(tiny_model, tmp_path):
    net, meta = load_model(tiny_model, kind="similarity")
    task, r = _task(loss="normsoftmax")
    task.start_from(net, str(tiny_model), meta)
    fit_killed_after_first_epoch(task, tmp_path)
    fit(_task(loss="normsoftmax")[0], tmp_path, resume=True)  # resumed with no start given
    record = load_model(tmp_path / "model.safetensors", kind="similarity")[1]["extra"]["init"]
    assert record is not None and record["from"] == str(tiny_model) and record["epochs"] == 1


def test_bf16_autocast_where_the_hardware_has_it(monkeypatch):
    import siamdiff.training.loop as train_mod

    cfg = recipe("mnist", 1, 28, TrainOptions(model="tiny")).train
    monkeypatch.setattr(train_mod, "cpu_has_bf16_instructions", lambda: False)
    assert not train_mod.autocast_enabled(cfg, torch.device("cpu"))
    assert train_mod.autocast_enabled(cfg, torch.device("cuda"))
    monkeypatch.setattr(train_mod, "cpu_has_bf16_instructions", lambda: True)
    assert train_mod.autocast_enabled(cfg, torch.device("cpu"))
    off = type(cfg)(**{**cfg.to_dict(), "amp": False})
    assert not train_mod.autocast_enabled(off, torch.device("cpu"))
    assert not train_mod.autocast_enabled(off, torch.device("cuda"))


def test_resume_with_other_settings_is_refused(tmp_path):
    task, r = _task()
    fit(task, tmp_path)
    task2, r2 = _task(lr=0.5)
    with pytest.raises(SiamdiffError, match="other training settings"):
        fit(task2, tmp_path, resume=True)
    with pytest.raises(SiamdiffError, match="does not exist"):
        fit(task2, tmp_path / "fresh", resume=True)


def test_divergence_is_caught(tmp_path):
    task, r = _task()
    task.loss = lambda batch: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(SiamdiffError, match="diverged"):
        fit(task, tmp_path)


def test_seed_recipe_is_the_reports():
    r = recipe("mnist", 1, 28, TrainOptions(model="seed"))
    assert (r.train.optimizer, r.train.lr, r.train.batch_size, r.train.epochs) == ("adam", 0.01, 100, 10)
    assert (r.loss.name, r.loss.margin, r.pairs, r.flip) == ("contrastive", 5.0, "seed", True)
    assert r.model.fc == (64, 32) and r.model.embed_dim == 2
    assert recipe("cifar10", 3, 32, TrainOptions(model="seed")).model.widths == (96, 192, 384)


def test_default_recipes_differ_per_dataset_and_explicit_settings_win():
    cifar, mnist = recipe("cifar10", 3, 32), recipe("mnist", 1, 28)
    assert (cifar.loss.name, cifar.translate, cifar.train.weight_decay, cifar.flip) == ("normsoftmax", 2, 0.05, True)
    assert cifar.loss.label_smoothing == 0.2 and mnist.loss.label_smoothing == 0.0
    assert cifar.model.mirror_average and not mnist.model.mirror_average
    assert (mnist.loss.name, mnist.cutout, mnist.train.weight_decay) == ("supcon", 0, 5e-4)
    assert cifar.loss.temperature == 0.05 and mnist.loss.temperature == 0.1
    assert recipe("cifar10", 3, 32, TrainOptions(model="default", loss="supcon", epochs=3)).loss.name == "supcon"
    assert recipe("mnist", 1, 28, TrainOptions(model="default", loss="triplet", margin=0.2)).loss.margin == 0.2
    assert recipe("cifar10", 3, 32, TrainOptions(model="default", epochs=3)).train.epochs == 3
    assert recipe("cifar10", 3, 32, TrainOptions(model="tiny")).train.epochs == 2
    assert recipe("cifar10", 3, 32).to_dict()["loss"]["label_smoothing"] == 0.2  # written into the model file
    folder = recipe("folder:x", 3, 32, TrainOptions(model="default"))
    assert folder.flip and folder.cutout == 0 and folder.loss.name == "supcon"


def test_seed_pairs_training_runs(tmp_path):
    task, r = _task(model="seed", max_batches=3)
    history = fit(task, tmp_path)
    assert len(history) == 2 and history[-1]["loss"] > 0


def test_loss_is_computed_in_float32_under_bf16_autocast():
    task, _ = _task()
    task.model.eval()  # fixed BatchNorm statistics: the two calls see the same network
    batch = next(iter(task.batches(0, torch.device("cpu"))))
    plain = task.loss(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = task.loss(batch)
    # only the network runs in bf16; the pair distances of unit vectors must not collapse
    assert mixed.item() == pytest.approx(plain.item(), rel=0.05)


def test_batches_without_pairs_of_a_kind_still_train():
    from siamdiff.similarity.losses import in_batch_contrastive, in_batch_triplet, supcon_loss

    e = torch.randn(4, 3, requires_grad=True)
    one_class = torch.zeros(4, dtype=torch.long)
    for loss in (in_batch_contrastive(e, one_class, 1.0), in_batch_triplet(e, one_class, 0.2),
                 supcon_loss(e, torch.arange(4))):
        loss.backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()


def test_seed_recipe_refuses_non_pair_losses():
    for loss in ("triplet", "supcon"):
        with pytest.raises(SiamdiffError, match="seed recipe trains on pairs"):
            recipe("mnist", 1, 28, TrainOptions(model="seed", loss=loss))


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    task, r = _task()
    fit(task, tmp_path)
    with pytest.raises(SiamdiffError, match="already holds a training run"):
        fit(_task()[0], tmp_path)
    assert len(fit(_task()[0], tmp_path, overwrite=True)) == 2


def test_resume_with_another_model_is_refused(tmp_path):
    task, r = _task()
    fit(task, tmp_path)
    train, val = _sets()
    other = recipe("mnist", 1, 28, TrainOptions(model="default", epochs=2, batch_size=50, device="cpu"))
    other = type(other)(**{**other.__dict__, "train": r.train})  # same training settings, other network
    with pytest.raises(SiamdiffError, match="another model"):
        fit(SimilarityTask(other, train, val), tmp_path, resume=True)


def test_training_on_some_classes_records_them(tmp_path, capsys):
    import numpy as np

    from siamdiff.cli import main
    from siamdiff.data.imageio import write_png_atomic
    from siamdiff.similarity.api import SimilarityModel

    folder = tmp_path / "data"
    for cls in "abcd":
        (folder / cls).mkdir(parents=True)
        for k in range(12):
            write_png_atomic(np.full((8, 8), 5 * k + 60 * "abcd".index(cls), np.uint8), folder / cls / f"{k}.png")
    out = tmp_path / "run"
    assert main(["train", "similarity", "--dataset", f"folder:{folder}", "--model", "tiny", "--epochs", "1",
                 "--image-size", "8", "--channels", "1", "--classes", "1,3", "--out", str(out)]) == 0
    assert SimilarityModel.load(out).classes == ["b", "d"]
    with pytest.raises(SystemExit) as refused:  # argparse's refusal: one line, exit 2
        main(["train", "similarity", "--dataset", f"folder:{folder}", "--classes", "1-x", "--out",
              str(tmp_path / "other")])
    assert refused.value.code == 2
    assert "--classes" in capsys.readouterr().err and not (tmp_path / "other").exists()


def _signalled_at(task, epoch, batch, number):
    """``task`` with the signal ``number`` raised as the batch ``batch`` of ``epoch`` is drawn (before its step)."""
    original = task.batches

    def batches(e, device):
        for i, b in enumerate(original(e, device)):
            if (e, i) == (epoch, batch):
                signal.raise_signal(number)
            yield b

    task.batches = batches
    return task


@pytest.mark.parametrize("number, epoch", [(signal.SIGTERM, 1), (signal.SIGINT, 0)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(tmp_path, number, epoch):
    fit(_task()[0], tmp_path / "full")
    before = signal.getsignal(number)
    with pytest.raises(Interrupted) as stopped:
        fit(_signalled_at(_task()[0], epoch, 1, number), tmp_path / "cut")
    assert stopped.value.signal_number == number and "--resume" in stopped.value.message
    assert signal.getsignal(number) is before  # the handlers are the caller's again
    state = load_state(tmp_path / "cut" / "state.pt")
    assert state["partial"]["batches"] == 2 and state["epoch"] == epoch - 1  # the step under way was finished
    history = fit(_task()[0], tmp_path / "cut", resume=True)
    assert [h["epoch"] for h in history] == [1, 2]
    assert same_weights(tmp_path / "full" / "model.safetensors", tmp_path / "cut" / "model.safetensors")


def test_sigterm_to_the_command_exits_143_with_a_checkpoint_that_resumes_bit_identically(digit_folder, tmp_path):
    cmd = [sys.executable, "-m", "siamdiff", "train", "similarity", "--dataset", f"folder:{digit_folder}", "--model",
           "tiny", "--channels", "1", "--image-size", "28", "--epochs", "4", "--batch-size", "2"]
    full = subprocess.run([*cmd, "--out", str(tmp_path / "full")], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    child = subprocess.Popen([*cmd, "--out", str(tmp_path / "cut")], stderr=subprocess.PIPE, text=True)
    log = tmp_path / "cut" / "log.jsonl"
    deadline = time.monotonic() + 120
    while not log.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first epoch is done: the signal comes in the second (or its evaluation)
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM and time.monotonic() - sent < 30
    assert len(err.strip().splitlines()) == 1 and "stopped by SIGTERM" in err, err
    resumed = subprocess.run([*cmd, "--out", str(tmp_path / "cut"), "--resume"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(tmp_path / "full" / "model.safetensors", tmp_path / "cut" / "model.safetensors")


def test_sigkill_while_the_state_is_written_leaves_the_previous_one(tmp_path):
    path = tmp_path / "state.pt"
    script = f"""
import os, signal, torch
from siamdiff.core.checkpoint import save_state
save_state({str(path)!r}, {{"epoch": 1, "w": torch.arange(4.0)}})
def dies_half_way(obj, f, *args, **kwargs):
    with open(f, "wb") as out:
        out.write(b"PK half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dies_half_way
save_state({str(path)!r}, {{"epoch": 2, "w": torch.zeros(4)}})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    state = load_state(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(4.0))


def test_resume_with_another_global_batch_is_refused_by_name(tmp_path):
    fit(_task()[0], tmp_path)
    with pytest.raises(SiamdiffError, match="global batch of 50 x 1 rank"):
        fit(_task_with_batch(25), tmp_path, resume=True)


def _task_with_batch(batch):
    train, val = _sets()
    return SimilarityTask(recipe("mnist", 1, 28, TrainOptions(model="tiny", epochs=2, batch_size=batch,
                                                              device="cpu")), train, val)


def test_a_read_only_run_folder_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    import siamdiff.training.kinds as kinds
    import siamdiff.training.loop as loop

    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    if os.geteuid() == 0:  # root writes anyway: the folder is read-only as the permission check sees it
        monkeypatch.setattr(loop.os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    monkeypatch.setattr(kinds, "load_splits", lambda *a, **k: pytest.fail("data read before the refusal"))
    try:
        with pytest.raises(SiamdiffError, match="is not writable"):
            kinds.train("similarity", "mnist", tmp_path / "ro" / "run", TrainOptions(model="tiny"))
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_a_file_as_run_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SiamdiffError, match="is a file"):
        fit(_task()[0], tmp_path / "f")


def test_a_shipped_start_is_recorded_by_its_name_not_where_it_is_installed(tiny_model):
    from siamdiff.core.registry import shipped_path
    from siamdiff.training.kinds import Start

    net, meta = load_model(tiny_model, kind="similarity")
    assert Start(net, meta, shipped_path("similarity", "mnist")).source == "shipped mnist"
    assert Start(net, meta, tiny_model).source == str(tiny_model)


def test_whitened_stem_decorrelates_its_patches_and_stays_frozen(tmp_path):
    from dataclasses import replace

    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    from siamdiff.nets.convnet import EmbeddingNet, preset
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 3, 12, 12, generator=gen) * 255).to(torch.uint8)
    images[:, 1] = images[:, 0] // 2 + images[:, 1] // 2  # correlated channels: whitening has work to do
    net = EmbeddingNet(replace(preset("tiny", "cifar10", 3, 32), stem=8))
    net.whiten_stem(images, eps=0.0)
    # oracle: numpy's covariance of every 3x3 patch of the normalised images, then the stem's filters applied to them
    x = net._normalized(images).numpy()
    patches = sliding_window_view(x, (3, 3), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5).reshape(-1, 27)
    responses = patches @ net.features[0].weight.detach().numpy().reshape(8, 27).T
    cov = np.cov(responses[:, :4].T)
    np.testing.assert_allclose(cov, np.eye(4), atol=1e-3)  # unit variance, decorrelated
    np.testing.assert_allclose(responses[:, 4:], -responses[:, :4], atol=1e-5)  # and the negatives
    top = np.linalg.eigvalsh(np.cov(patches.T))[::-1][:4]  # the largest-variance directions, in order
    raw = patches @ (net.features[0].weight.detach().numpy().reshape(8, 27)[:4].T * np.sqrt(top))
    np.testing.assert_allclose(raw.var(0, ddof=1), top, rtol=1e-3)

    train, val = _sets()
    r = recipe("cifar10", 1, 28, TrainOptions(model="tiny", epochs=1, batch_size=50, device="cpu"))
    assert r.whiten and not recipe("mnist", 1, 28).whiten
    task = SimilarityTask(r, train, val)
    stem = task.model.features[0].weight.detach().clone()
    fit(task, tmp_path)
    assert torch.equal(task.model.features[0].weight.detach(), stem)  # frozen through training
    assert not torch.equal(task.model.features[1].weight.detach(), torch.ones_like(task.model.features[1].weight))
