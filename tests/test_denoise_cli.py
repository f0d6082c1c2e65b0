"""`siamdiff train ddpm` and `siamdiff denoise` on a tiny model: outputs, JSON fields, and bad input."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from siamdiff.cli import main


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_ddpm(tmp_path_factory, digit_folder):
    out = tmp_path_factory.mktemp("ddpm")
    code = main(["train", "ddpm", "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--epochs", "1",
                 "--channels", "1", "--image-size", "28", "--out", str(out), "--overwrite"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def noisy_pngs(tmp_path_factory, digit_folder):
    d = tmp_path_factory.mktemp("noisy")
    rng = np.random.default_rng(0)
    paths = []
    for k, src in enumerate(sorted(digit_folder.rglob("*.png"))[:3]):
        clean = np.asarray(Image.open(src).convert("L"), dtype=np.float64) / 255
        noisy = np.clip(clean + 0.2 * rng.normal(size=clean.shape), 0, 1)
        Image.fromarray((noisy * 255).round().astype(np.uint8)).save(d / f"n{k}.png")
        paths.append(d / f"n{k}.png")
    return paths


def test_denoise_writes_pngs_and_json(capsys, tiny_ddpm, noisy_pngs, tmp_path):
    code, out, err = run(capsys, "denoise", *noisy_pngs, "--out", tmp_path / "clean", "--model", tiny_ddpm,
                         "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3
    for row, src in zip(rows, noisy_pngs):
        assert row["path"] == str(src) and row["method"] == "tweedie"
        assert row["sigma"] == row["sigma_estimated"] and 0.05 < row["sigma"] < 0.5
        assert row["t_start"] > 0
        with Image.open(row["output"]) as im:
            assert im.size == (28, 28)
    code, out, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "one.png", "--model", tiny_ddpm,
                         "--sigma", "0.2", "--method", "ddim", "--steps", "3", "--label", "4", "--json")
    row = json.loads(out)
    assert code == 0 and row["sigma"] == 0.2 and row["sigma_estimated"] is None
    assert (tmp_path / "one.png").is_file()


def test_denoise_saves_the_chain_on_request(capsys, tiny_ddpm, noisy_pngs, tmp_path):
    code, out, err = run(capsys, "denoise", *noisy_pngs[:2], "--out", tmp_path / "clean", "--model", tiny_ddpm,
                         "--method", "ddim", "--steps", "3", "--save-chain", tmp_path / "chains", "--json")
    assert code == 0, err
    for row, src in zip(map(json.loads, out.splitlines()), noisy_pngs):
        strip, *frames = row["chain"]
        assert strip == str(tmp_path / "chains" / f"{src.stem}-chain.png") and len(frames) == 3
        with Image.open(strip) as im:
            assert im.size == (4 * 28 + 3 * 2, 28)  # the input and three estimates, 2 px apart
        with Image.open(frames[-1]) as last, Image.open(row["output"]) as output:
            assert np.array_equal(np.asarray(last), np.asarray(output))  # DDIM ends at its last estimate
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "y.png", "--model", tiny_ddpm,
                       "--save-chain", tmp_path / "file")
    assert code == 2 and "--save-chain" in err and "is a file" in err and not (tmp_path / "y.png").exists()


@pytest.mark.parametrize("extra,message", [
    (["--sigma", "-0.1"], "--sigma"), (["--sigma", "abc"], "--sigma"), (["--steps", "0"], "--steps"),
    (["--label", "12"], "--label"), (["--label", "3", "--guidance", "nan"], "--guidance"),
    (["--method", "ancestral", "--seed", str(2 ** 70)], "--seed"), (["--sigma", "1e6"], "beyond the noise"),
])
def test_denoise_bad_arguments(capsys, tiny_ddpm, noisy_pngs, tmp_path, extra, message):
    code, _, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "x.png", "--model", tiny_ddpm, *extra)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_denoise_never_overwrites_its_input(capsys, tiny_ddpm, noisy_pngs):
    before = noisy_pngs[0].read_bytes()
    code, _, err = run(capsys, "denoise", noisy_pngs[0], "--out", noisy_pngs[0], "--model", tiny_ddpm)
    assert code == 2 and "overwrite the input" in err and noisy_pngs[0].read_bytes() == before
    code, _, err = run(capsys, "denoise", *noisy_pngs, "--out", noisy_pngs[0].parent, "--model", tiny_ddpm)
    assert code == 2 and "overwrite the input" in err and noisy_pngs[0].read_bytes() == before


def test_denoise_checks_every_output_before_writing_any(capsys, tiny_ddpm, noisy_pngs, tmp_path):
    (tmp_path / "n1.png").mkdir()  # the second target is a folder
    code, _, err = run(capsys, "denoise", *noisy_pngs, "--out", tmp_path, "--model", tiny_ddpm)
    assert code == 2 and "is a folder" in err
    assert not (tmp_path / "n0.png").exists()  # nothing half-written
    code, _, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "o.jpg", "--model", tiny_ddpm)
    assert code == 2 and "written as PNG" in err and not (tmp_path / "o.jpg").exists()


def test_companions_made_for_other_images_are_refused(capsys, tiny_ddpm, noisy_pngs, tmp_path):
    from siamdiff.core.checkpoint import save_model
    from siamdiff.nets.convnet import EmbedConfig, EmbeddingNet
    from siamdiff.reconstruction.estimate import SigmaNet, SigmaNetConfig

    colour = tmp_path / "sigma-rgb.safetensors"
    save_model(colour, SigmaNet(SigmaNetConfig(3, (4, 4))), "sigma", SigmaNetConfig(3, (4, 4)).to_dict())
    big = tmp_path / "clf-32.safetensors"
    cfg = EmbedConfig("embed", 1, 32, (4, 8), 10, normalize=False)
    save_model(big, EmbeddingNet(cfg), "classifier", cfg.to_dict())
    code, _, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "o.png", "--model", tiny_ddpm,
                       "--label", "auto", "--estimator", colour)
    assert code == 2 and "3-channel" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.png").exists()
    # a classifier of another size is given the images at its own size (the evaluation protocol does the same for
    # a model made for another size), so its answer is a class of this dataset
    code, out, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "o.png", "--model", tiny_ddpm,
                         "--label", "auto", "--classifier", big, "--json")
    assert code == 0 and 0 <= json.loads(out)["label"] < 10, err
    code, _, err = run(capsys, "eval", "denoise", "--model", tiny_ddpm, "--dataset", "sample:mnist", "--n", 2,
                       "--method", "tweedie", "--estimator", colour)
    assert code == 2 and "3-channel" in err
    for sigmas in ("", "0.1,,0.3", "0.1,"):  # an empty item is a typo, not a value to drop silently
        code, _, err = run(capsys, "eval", "denoise", "--dataset", "sample:mnist", "--method", "noisy",
                           f"--sigmas={sigmas}")
        assert code == 2 and "--sigmas must be comma-separated numbers" in err, sigmas


def test_denoise_takes_other_sizes_and_refuses_similarity_models(capsys, tiny_ddpm, tiny_model, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(big)
    code, out, err = run(capsys, "denoise", big, "--out", tmp_path / "o.png", "--model", tiny_ddpm, "--json")
    assert code == 0, err
    row = json.loads(out)
    assert (row["width"], row["height"]) == (50, 40) and row["tiles"] == 6  # 28-pixel tiles, 7 apart
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (50, 40)
    code, _, err = run(capsys, "denoise", big, "--out", tmp_path / "p.png", "--model", tiny_model)
    assert code == 2 and "not a diffusion model" in err


def test_eval_denoise_json_rows(capsys, tiny_ddpm, digit_folder):
    for method, model in (("noisy", None), ("tweedie", tiny_ddpm), ("wavelet", None)):
        argv = ["eval", "denoise", "--dataset", f"folder:{digit_folder}", "--method", method, "--sigmas", "0.1,0.3",
                "--n", 4, "--json", "--channels", 1, "--image-size", 28] + (["--model", model] if model else [])
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]  # one JSON line per setting
        assert [r["sigma"] for r in rows] == [0.1, 0.3]
        for r in rows:
            assert {"sigma", "method", "psnr", "ssim", "class_accuracy", "sigma_rel_error", "n"} <= set(r)
            assert r["n"] == 4 and r["method"] == method and r["sigma_rel_error"] >= 0
    code, _, err = run(capsys, "eval", "denoise", "--dataset", f"folder:{digit_folder}", "--method", "tweedie",
                       "--sigmas", "0.1,-2")
    assert code == 2 and "must be a number above 0 and at most 100" in err


def test_noisy_psnr_matches_the_noise_level(capsys, digit_folder):
    code, out, _ = run(capsys, "eval", "denoise", "--dataset", f"folder:{digit_folder}", "--method", "noisy",
                       "--sigmas", "0.1", "--n", 8, "--sigma-mode", "true", "--json", "--channels", 1)
    row = json.loads(out)
    # Gaussian noise of sigma 0.1 has PSNR 20 dB; the baseline shows the input clamped to [0, 1], which can only
    # move pixels closer to the clean image in [0, 1]: at least 20 dB (up to sampling), far below a denoiser's
    assert code == 0 and 19.8 < row["psnr"] < 26.0


def test_sample_writes_a_grid(capsys, tiny_ddpm, tmp_path):
    code, out, err = run(capsys, "sample", "--model", tiny_ddpm, "--n", 5, "--steps", 3, "--label", 2,
                         "--out", tmp_path / "g.png", "--json")
    assert code == 0, err
    assert json.loads(out) == {"output": str(tmp_path / "g.png"), "images": 5, "method": "ddim", "steps": 3,
                               "label": 2, "guidance": 1.0, "seed": 0}
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (5 * 30, 30)
    for out, message in ((tmp_path / "no" / "g.png", "does not exist"), (tmp_path / "g.jpg", ".png file")):
        code, _, err = run(capsys, "sample", "--model", tiny_ddpm, "--out", out, "--seed", -1)
        assert code == 2 and "--seed" in err  # argparse first
        code, _, err = run(capsys, "sample", "--model", tiny_ddpm, "--out", out)
        assert code == 2 and message in err and not out.exists()


def test_reconstruction_pictures(tiny_ddpm, tmp_path):
    import torch

    from siamdiff.data.datasets import load_sample
    from siamdiff.reconstruction.noise import gaussian
    from siamdiff.reconstruction.pipeline import Denoiser
    from siamdiff.reconstruction.plots import plot_chain, plot_flips, plot_psnr_curves, plot_vae_grid
    from siamdiff.reconstruction.vae import PRESETS, VAE

    data = load_sample("mnist")
    clean = data.images[:6].float() / 255
    noisy = gaussian(clean, 0.3, torch.Generator().manual_seed(0))
    den = Denoiser.load(tiny_ddpm)
    paths = [plot_vae_grid(VAE(PRESETS["tiny"]).eval(), clean, noisy, tmp_path / "vae.png"),
             plot_chain(den.net, den.schedule, noisy[:1], 0.3, tmp_path / "chain.png", label=3),
             plot_psnr_curves([{"name": "a", "sigma": 0.1, "psnr": 30}, {"name": "a", "sigma": 0.3, "psnr": 25}],
                              tmp_path / "curves.png"),
             plot_flips(clean, noisy, {"x": clean}, data.labels[:6], {"x": torch.tensor([7, 2, 1, 0, 4, 5])},
                        data.classes, tmp_path / "flips.png")]
    for p in paths:
        with Image.open(p) as im:
            assert im.size[0] > 100 and np.asarray(im.convert("L")).std() > 5


@pytest.fixture(scope="module")
def tiny_companions(tmp_path_factory, digit_folder):
    """A tiny noise estimator and classifier for the same 28x28 grayscale images as tiny_ddpm."""
    paths = {}
    for what in ("noise-estimator", "classifier"):
        out = tmp_path_factory.mktemp(what)
        code = main(["train", what, "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--epochs", "1",
                     "--channels", "1", "--image-size", "28", "--out", str(out), "--overwrite"])
        assert code == 0
        paths[what] = out / "model.safetensors"
    return paths


def test_denoise_uses_the_learned_estimator_and_predicted_label(capsys, tiny_ddpm, tiny_companions, noisy_pngs,
                                                                 tmp_path):
    import torch

    from siamdiff.core.checkpoint import load_model
    from siamdiff.data.inputs import as_batch
    from siamdiff.reconstruction.pipeline import Denoiser

    code, out, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "a.png", "--model", tiny_ddpm,
                         "--estimator", tiny_companions["noise-estimator"], "--classifier",
                         tiny_companions["classifier"], "--label", "auto", "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["sigma_estimator"] == "learned" and row["sigma"] == row["sigma_estimated"]
    # the sigma used is the estimator's own output for this image
    est, _ = load_model(tiny_companions["noise-estimator"], kind="sigma")
    image = as_batch(noisy_pngs[0])
    with torch.no_grad():
        assert row["sigma"] == pytest.approx(float(est(image)[0]), rel=1e-5)
    n_classes = len(Denoiser.load(tiny_ddpm).classes)
    assert isinstance(row["label"], int) and 0 <= row["label"] < n_classes
    # without an estimator: wavelet-MAD; --label auto without a classifier is a clear error
    code, out, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "b.png", "--model", tiny_ddpm,
                         "--json")
    assert code == 0 and json.loads(out)["sigma_estimator"] == "wavelet-MAD" and json.loads(out)["label"] is None
    code, _, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "c.png", "--model", tiny_ddpm,
                       "--label", "auto")
    assert code == 2 and "classifier" in err and not (tmp_path / "c.png").exists()
    code, _, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "c.png", "--model", tiny_ddpm,
                       "--label", "seven")
    assert code == 2 and "--label" in err


def test_eval_predicted_labels_come_from_the_unguided_estimate(capsys, tiny_ddpm, tiny_companions, digit_folder):
    argv = ["eval", "denoise", "--dataset", f"folder:{digit_folder}", "--method", "tweedie", "--sigmas", "0.5",
            "--n", 6, "--json", "--channels", 1, "--image-size", 28, "--model", tiny_ddpm,
            "--classifier", tiny_companions["classifier"], "--labels", "predicted"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    row = json.loads(out)
    assert row["labels"] == "predicted" and 0 <= row["class_accuracy"] <= 1
    noisy = [a if a != "tweedie" else "noisy" for a in argv]
    code, _, err = run(capsys, *noisy[:noisy.index("--model")], *noisy[noisy.index("--model") + 2:])
    assert code == 2 and "--labels predicted" in err


def test_eval_of_a_shipped_model_uses_its_estimator_and_classifier(capsys):
    # as `siamdiff denoise` does; `--estimator wavelet` asks for the classical estimate instead
    argv = ["eval", "denoise", "--dataset", "sample:mnist", "--method", "tweedie", "--sigmas", "0.3", "--n", 8,
            "--json", "--model", "mnist"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    row = json.loads(out)
    assert row["sigma_estimator"] == "learned" and row["class_accuracy"] is not None
    code, out, err = run(capsys, *argv, "--estimator", "wavelet")
    assert code == 0, err
    assert json.loads(out)["sigma_estimator"] == "wavelet-MAD"


def test_train_ddpm_fine_tunes_from_init(capsys, tiny_ddpm, tiny_model, digit_folder, tmp_path):
    from siamdiff.core.checkpoint import load_model, read_metadata
    from siamdiff.reconstruction.models import build_from_config

    base = ["train", "ddpm", "--dataset", f"folder:{digit_folder}", "--epochs", "1", "--lr", "1e-5"]
    # the folder is read at the model's size and channel count (the default for folders is 3 x 32 x 32)
    code, _, err = run(capsys, *base, "--init", tiny_ddpm, "--model", "seed", "--out", tmp_path / "ft")
    assert code == 0, err
    init, init_meta = load_model(tiny_ddpm / "model.safetensors")
    tuned, meta = load_model(tmp_path / "ft" / "model.safetensors")
    assert meta["config"] == init_meta["config"]  # the network of --init, not --model's
    assert meta["extra"]["schedule"] == init_meta["extra"]["schedule"]
    record = read_metadata(tmp_path / "ft" / "model.safetensors")["extra"]["init"]
    assert record["from"] == str(tiny_ddpm / "model.safetensors") and record["epochs"] == 1
    # the run started at the given weights: a few small steps away from them, far from a fresh network's
    fresh = build_from_config(init_meta["config"])
    moved = sum((a - b).abs().sum() for a, b in zip(tuned.state_dict().values(), init.state_dict().values()))
    apart = sum((a - b).abs().sum() for a, b in zip(fresh.state_dict().values(), init.state_dict().values()))
    assert 0 < moved < 0.05 * apart

    code, _, err = run(capsys, *base, "--init", tiny_model, "--out", tmp_path / "bad")
    assert code == 2 and "not a diffusion model" in err
    code, _, err = run(capsys, *base, "--channels", "3", "--init", tiny_ddpm, "--out", tmp_path / "rgb")
    assert code == 2 and "1 channel(s); this dataset has 3" in err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "rgb").exists()


@pytest.mark.skipif(not any(__import__("shutil").which(c) for c in ("g++", "c++", "clang++")),
                    reason="Denoiser.compile needs a C++ compiler for torch.compile on the CPU")
def test_compiled_denoiser_matches_eager(tiny_ddpm):
    import torch

    from siamdiff.data.datasets import load_sample
    from siamdiff.reconstruction.noise import gaussian
    from siamdiff.reconstruction.pipeline import Denoiser

    noisy = gaussian(load_sample("mnist").images[:4].float() / 255, 0.3, torch.Generator().manual_seed(0))
    eager = Denoiser.load(tiny_ddpm)
    fast = Denoiser.load(tiny_ddpm).compile()
    assert fast.channels == eager.channels and fast.image_size == eager.image_size
    for kw in ({"sigma": 0.3}, {"sigma": 0.2, "method": "ddim", "steps": 3}):
        want, info = eager.denoise(noisy, **kw)
        got, info_fast = fast.denoise(noisy, **kw)
        assert info_fast.t_start == info.t_start
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_compiled_denoiser_estimates_sigma_as_the_eager_one(monkeypatch):
    """The wiring of compile(), without compiling (torch.compile as the identity): the estimator's pooled
    statistics are reached through the compiled wrapper, for an image of the model's size and a larger one."""
    import torch

    from siamdiff.data.datasets import load_sample
    from siamdiff.reconstruction.noise import gaussian
    from siamdiff.reconstruction.pipeline import Denoiser

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    noisy = gaussian(load_sample("mnist").images[:4].float() / 255, 0.3, torch.Generator().manual_seed(0))
    big = torch.cat([noisy[0, 0]] * 6, dim=1)[None, None]  # 28 x 168: tiles, and 128x128 estimate tiles
    eager, fast = Denoiser.load("mnist"), Denoiser.load("mnist").compile()
    for x in (noisy, big):
        assert torch.equal(fast.denoise(x)[0], eager.denoise(x)[0])
    assert len(compiled) == 3  # the network, the estimator and its statistics


def test_compile_failure_is_one_clear_error(tiny_ddpm, monkeypatch):
    import torch

    from siamdiff.core.errors import SiamdiffError
    from siamdiff.reconstruction.pipeline import Denoiser

    def broken(net, **kw):
        def call(*args):
            raise RuntimeError("InductorError: no working C++ compiler found\ncompiler log ...")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    den = Denoiser.load(tiny_ddpm).compile()
    with pytest.raises(SiamdiffError, match=r"torch.compile failed \(RuntimeError: InductorError: no working C\+\+ "
                                            r"compiler found\); use the network without compile\(\)$"):
        den.denoise(torch.rand(1, 1, 28, 28), sigma=0.3)


def test_eval_measures_a_model_of_another_size_at_its_size(tiny_companions, digit_folder, tmp_path, monkeypatch):
    """The seed design's case (32x32 on 28x28 digits), here 16x16: the clean images are resized and the noise is
    drawn at the model's size, so the model sees white noise of the sigma it is told, not resized noise."""
    from siamdiff.data.datasets import load_sample
    from siamdiff.reconstruction import evaluate as ev
    from siamdiff.reconstruction import pipeline
    from siamdiff.reconstruction.metrics import psnr

    assert main(["train", "ddpm", "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--epochs", "1",
                 "--channels", "1", "--image-size", "16", "--out", str(tmp_path / "m16")]) == 0
    seen, classified = [], []

    def identity(net, schedule, x, sigma, method, *args):
        seen.append(x.clone())
        return x.clamp(0, 1), torch.zeros(len(x), dtype=torch.long)

    real_load = pipeline.load_model

    def load(path, kind=None, **kw):  # records the size of what the classifier is given (it would pool any size)
        net, meta = real_load(path, kind=kind, **kw)
        if kind == "classifier":
            net.register_forward_pre_hook(lambda module, args: classified.append(args[0].shape[-1]))
        return net, meta

    monkeypatch.setattr(pipeline, "denoise", identity)
    monkeypatch.setattr(pipeline, "load_model", load)
    rows = ev.evaluate_denoise("sample:mnist", [0.2], "tweedie", model=tmp_path / "m16", n=20, sigma_mode="true",
                               classifier=tiny_companions["classifier"], device="cpu")
    clean = torch.nn.functional.interpolate(load_sample("mnist").images[:20].float() / 255, size=(16, 16),
                                            mode="bilinear", align_corners=False).clamp(0, 1)
    noise = torch.cat(seen) - clean
    assert noise.shape[-1] == 16 and rows[0]["image_size"] == 16
    assert abs(float(noise.std()) - 0.2) < 0.01  # resizing the noisy 28x28 image instead gives about 0.13
    # PSNR against the clean images at 16x16 (the identity's output is the noisy input)
    assert rows[0]["psnr"] == pytest.approx(float(psnr(torch.cat(seen).clamp(0, 1), clean).mean()), abs=1e-4)
    assert classified and set(classified) == {28}  # the 28x28 classifier saw the outputs at its size
    classified.clear()
    ev.evaluate_denoise("sample:mnist", [0.5], "tweedie", model=tmp_path / "m16", n=20, sigma_mode="true",
                        classifier=tiny_companions["classifier"], labels="predicted", device="cpu")
    assert len(classified) == 2 and set(classified) == {28}  # the pilot estimate too, for --labels predicted


def test_eval_at_another_size_resizes_the_clean_images(capsys, tiny_ddpm):
    """--image-size measures a model-free method at another size (the report's 32x32 protocol); a model is only
    measured at its own size."""
    rows = {}
    for size in ("28", "32"):
        code, out, err = run(capsys, "eval", "denoise", "--dataset", "sample:mnist", "--method", "noisy", "--sigmas",
                             "0.1", "--sigma-mode", "true", "--n", 30, "--image-size", size, "--json")
        assert code == 0, err
        rows[size] = json.loads(out)
    assert rows["28"]["image_size"] == 28 and rows["32"]["image_size"] == 32
    # the same noise level on either grid: the noisy input's PSNR barely moves (clamping helps a little on black)
    assert abs(rows["28"]["psnr"] - rows["32"]["psnr"]) < 0.5
    code, _, err = run(capsys, "eval", "denoise", "--dataset", "sample:mnist", "--method", "tweedie", "--model",
                       tiny_ddpm, "--image-size", 32, "--n", 2)
    assert code == 2 and "28x28 images: leave out --image-size" in err and err.count("\n") == 1


def test_eval_refuses_images_the_model_cannot_take(capsys, tiny_ddpm, digit_folder):
    for argv, message in (
            (["--dataset", "sample:cifar10", "--model", tiny_ddpm], "3 channel(s) but this model takes 1-channel"),
            (["--dataset", f"folder:{digit_folder}", "--model", tiny_ddpm, "--channels", 3], "leave out --channels"),
            (["--dataset", "sample:mnist", "--method", "noisy", "--image-size", 5], "too small")):
        argv = ["eval", "denoise", "--sigmas", "0.1", "--n", 2, *argv]
        code, _, err = run(capsys, *(argv if "--method" in argv else argv + ["--method", "tweedie"]))
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_eval_refuses_a_measurement_that_does_not_fit_in_memory(capsys, monkeypatch):
    from siamdiff.core import config

    monkeypatch.setattr(config, "IMAGE_MEMORY_BYTES", 2**20)  # 30 images x 2 copies: 0.19 MB at 28, 2.2 MB at 96
    argv = ["eval", "denoise", "--dataset", "sample:mnist", "--method", "noisy", "--sigmas", "0.1", "--n", 30]
    code, _, err = run(capsys, *argv, "--image-size", 96)
    assert code == 2 and "30 images at 96x96 would take" in err and err.count("\n") == 1
    assert "smaller --n or --image-size" in err  # a model-free method can be measured at a smaller size
    code, _, err = run(capsys, *argv)
    assert code == 0, err


def test_train_refuses_sizes_a_builtin_dataset_cannot_take(capsys, tiny_ddpm, tmp_path):
    """Refused before any data is read (these run without the datasets): each one line, exit 2, nothing written."""
    for argv, message in (
            (["denoiser", "--image-size", 16, "--channels", 3], "--image-size applies to folder datasets only; "
                                                               "'mnist' has a fixed size"),
            (["similarity", "--channels", 3], "--channels 3 does not apply to 'mnist': its images are grayscale (a "
                                              "colour dataset is read as gray with --channels 1)"),
            (["ddpm", "--model", "seed", "--image-size", 28], "the seed design is 32x32; --image-size 28"),
            (["ddpm", "--init", tiny_ddpm, "--image-size", 16], "is a 28x28 model; --image-size 16 does not apply")):
        out = tmp_path / "run"
        code, _, err = run(capsys, "train", argv[0], "--dataset", "mnist", "--data-dir", tmp_path / "no-data",
                           *argv[1:], "--out", out)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()
    code, _, err = run(capsys, "train", "ddpm", "--dataset", "mnsit", "--image-size", 16, "--out", tmp_path / "x")
    assert code == 2 and "unknown dataset 'mnsit'" in err


def test_train_ddpm_at_another_size_on_a_builtin_dataset(capsys, data_root, tmp_path):
    from siamdiff.core.checkpoint import load_model

    base = ["train", "ddpm", "--dataset", "mnist", "--data-dir", data_root, "--epochs", "1", "--max-batches", "1"]
    # MNIST is read at 28x28; --image-size gives the model's size and training resizes to it, as for the seed
    code, _, err = run(capsys, *base, "--model", "tiny", "--image-size", "16", "--out", tmp_path / "at16")
    assert code == 0, err
    net, _ = load_model(tmp_path / "at16" / "model.safetensors", kind="diffusion")
    assert net.config.image_size == 16


def test_train_ddpm_loss_option(capsys, tiny_ddpm, digit_folder, tmp_path):
    from siamdiff.core.checkpoint import read_metadata

    base = ["train", "ddpm", "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--epochs", "1",
            "--max-batches", "1", "--channels", "1", "--image-size", "16"]
    code, _, err = run(capsys, *base, "--loss", "l1", "--out", tmp_path / "l1")
    assert code == 0, err
    assert read_metadata(tmp_path / "l1" / "model.safetensors")["extra"]["recipe"]["loss"] == "l1"
    code, _, err = run(capsys, *base, "--out", tmp_path / "mse")
    assert code == 0, err
    assert read_metadata(tmp_path / "mse" / "model.safetensors")["extra"]["recipe"]["loss"] == "mse"
    code, _, err = run(capsys, *base, "--init", tiny_ddpm, "--loss", "l1", "--out", tmp_path / "ft")
    assert code == 2 and "--init keeps the model's loss" in err and err.count("\n") == 1
    assert not (tmp_path / "ft").exists()


def test_paths_and_numbers_a_careless_user_types(capsys, tiny_ddpm, noisy_pngs, tmp_path):
    """Found by feeding the CLI bad input: each was a traceback ('internal error', exit 1), a hang, or garbage
    accepted with exit 0. Now each is one line, exit 2, and nothing is written."""
    for argv, message in (
            (["denoise", noisy_pngs[0], "--out", tmp_path / ("a" * 300 + ".png")], "file name too long"),
            (["denoise", *noisy_pngs[:2], "--out", tmp_path / "o.png"], "is one file but there are 2 inputs"),
            (["denoise", noisy_pngs[0], "--out", ""], "argument --out: must not be empty"),
            (["denoise", noisy_pngs[0], "--out", tmp_path / "o.png", "--model", ""], "no model given"),
            (["denoise", noisy_pngs[0], "--out", tmp_path / "o.png", "--model", tmp_path / "gone.safetensors"],
             "model file '"),
            (["denoise", noisy_pngs[0], "--out", tmp_path / "o.png", "--label", 1, "--guidance", "1e300"],
             "must be a number from 0 to 100"),
            (["sample", "--model", tiny_ddpm, "--steps", 100_000, "--out", tmp_path / "o.png"],
             "--steps must be from 1 to the model's"),
            (["sample", "--model", tiny_ddpm, "--n", 100_000_000, "--out", tmp_path / "o.png"], "ask for fewer"),
            (["denoise", noisy_pngs[0], "--out", tmp_path / "o.png", "--method", "ddim", "--steps", 100_000],
             "--steps must be from 1 to the model's"),
            (["eval", "denoise", "--dataset", "sample:mnist", "--method", "noisy", "--n", 2, "--sigmas", "1e300"],
             "at most 100"),
            (["eval", "denoise", "--dataset", "folder:", "--method", "noisy", "--n", 2], "folder: needs a path"),
            (["denoise", noisy_pngs[0], "--out", tmp_path / "o.png", "--label", 2 ** 70], "--label must be between"),
            (["eval", "denoise", "--dataset", "sample:mnist", "--method", "nlm", "--model", "mnist", "--n", 2],
             "--model does not apply to the model-free methods"),
            (["eval", "denoise", "--dataset", "sample:mnist", "--method", "noisy", "--n", 2, "--channels", 2],
             "--channels must be 1 or 3")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
        assert not (tmp_path / "o.png").exists()
    assert list(tmp_path.iterdir()) == []


def test_denoise_outputs_go_only_where_they_were_asked_to(capsys, tiny_ddpm, noisy_pngs, tmp_path):
    """One file into an existing folder, several into a folder made inside an existing one; anything else refused
    before the work, with nothing created."""
    for argv, message in (([noisy_pngs[0], "--out", tmp_path / "missing" / "x.png"], "folder '"),
                          ([noisy_pngs[0], "--out", tmp_path / "x.txt"], "is neither a .png file nor a folder"),
                          ([*noisy_pngs, "--out", tmp_path / "a" / "b"], "is neither a .png file nor a folder")):
        code, _, err = run(capsys, "denoise", *argv, "--model", tiny_ddpm)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert list(tmp_path.iterdir()) == []
    code, _, err = run(capsys, "denoise", *noisy_pngs, "--out", tmp_path / "made", "--model", tiny_ddpm)
    assert code == 0 and len(list((tmp_path / "made").iterdir())) == 3, err


def test_sample_draws_in_batches(tiny_ddpm):
    from siamdiff.reconstruction.pipeline import Denoiser

    model = Denoiser.load(tiny_ddpm)
    sizes = []
    model.net.register_forward_pre_hook(lambda net, args: sizes.append(len(args[0])))
    images = model.sample(5, steps=2, batch_size=2)
    assert sizes == [2, 2, 2, 2, 1, 1]  # two network calls (steps) for each batch of 2, 2 and 1
    assert images.shape == (5, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.sample(5, steps=2, batch_size=2))  # the seed fixes every batch
    assert not torch.equal(images[:2], images[2:4])  # each batch draws its own noise


def test_a_damaged_schedule_is_one_line(capsys, tiny_ddpm, noisy_pngs, tmp_path):
    """A model file whose schedule metadata is missing, unknown or has no steps is refused as damaged."""
    import json as js

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_ddpm / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(tiny_ddpm / "model.safetensors"))
    extra = js.loads(meta["extra"])
    for name, schedule, message in (("none", None, "it has no noise schedule"),
                                    ("bogus", {**extra["schedule"], "kind": "bogus"}, "unknown schedule 'bogus'"),
                                    ("zero", {**extra["schedule"], "steps": 0}, "1 to 100,000 steps, not 0")):
        damaged = {k: v for k, v in extra.items() if k != "schedule"} | ({"schedule": schedule} if schedule else {})
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={**meta, "extra": js.dumps(damaged)})
        for argv in (["denoise", noisy_pngs[0], "--out", tmp_path / "o.png"], ["sample", "--out", tmp_path / "g.png"]):
            code, _, err = run(capsys, *argv, "--model", path)
            assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.safetensors", "none.safetensors", "zero.safetensors"]


def test_wavelet_estimator_by_name_and_no_stray_warnings_on_tiny_images(capsys, tiny_ddpm, noisy_pngs, tmp_path):
    code, out, err = run(capsys, "denoise", noisy_pngs[0], "--out", tmp_path / "w.png", "--model", tiny_ddpm,
                         "--estimator", "wavelet", "--json")
    assert code == 0 and json.loads(out)["sigma_estimator"] == "wavelet-MAD", err
    from siamdiff.reconstruction.estimate import wavelet_sigma

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-image's warning about a 1-pixel image would fail here
        assert wavelet_sigma(torch.full((2, 1, 1, 1), 0.5)).shape == (2,)


def test_resume_with_another_loss_is_refused(capsys, digit_folder, tmp_path):
    base = ["train", "ddpm", "--dataset", f"folder:{digit_folder}", "--model", "tiny", "--epochs", "1",
            "--max-batches", "1", "--channels", "1", "--image-size", "16", "--out", tmp_path / "run"]
    assert run(capsys, *base, "--loss", "l1")[0] == 0
    code, _, err = run(capsys, *base, "--resume")  # the design's mse: the run would change loss half-way
    assert code == 2 and "was written with another loss" in err and err.count("\n") == 1, err
    code, _, err = run(capsys, *base, "--loss", "l1", "--resume")
    assert code == 0, err


@pytest.mark.parametrize("method,clip,sigma_mode,labels", [("tweedie", False, "auto", "none"),
                                                           ("ddim", True, "true", "true"),
                                                           ("tweedie", True, "auto", "predicted"),
                                                           ("nlm", False, "true", "none")])
def test_eval_reports_the_psnr_of_what_the_denoiser_gives(method, clip, sigma_mode, labels):
    """One pipeline: the PSNR `eval denoise` reports is the PSNR of Denoiser.denoise's outputs on the same noisy
    images, with the same estimator, declipping, guidance labels and seed."""
    from siamdiff.data.datasets import load_sample
    from siamdiff.reconstruction.evaluate import evaluate_denoise, noisy_images
    from siamdiff.reconstruction.metrics import psnr
    from siamdiff.reconstruction.pipeline import Denoiser

    model = None if method == "nlm" else "mnist"
    row, = evaluate_denoise("sample:mnist", [0.3], method, model, n=12, clip=clip, sigma_mode=sigma_mode,
                            classifier="mnist", labels=labels, steps=3, device="cpu", batch_size=5)
    data = load_sample("mnist")
    clean = data.images[:12].float() / 255
    noisy = noisy_images(clean, 0.3, clip)
    den = Denoiser.load(model, classifier="mnist", kind=None if model is None else "diffusion")
    outputs = []
    for s in range(0, 12, 5):  # the evaluation's batches of 5
        label = {"none": None, "true": data.labels[:12][s:s + 5], "predicted": "auto"}[labels]
        outputs.append(den.denoise(noisy[s:s + 5], "auto" if sigma_mode == "auto" else 0.3, method, 3, label,
                                   1.0 if label is not None else 0.0)[0])
    out = torch.cat(outputs)
    assert row["psnr"] == pytest.approx(float(psnr(out, clean).mean()), abs=1e-6)
    assert row["class_accuracy"] == pytest.approx(float((den.classify(out) == data.labels[:12]).float().mean()))
