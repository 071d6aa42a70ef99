"""Explanations (model/relevance.py, inference/explain.py, predict.py --explain): the maps point at the
evidence and stop doing so when the weights are random; files of the right shape, order and type,
at each image's own oriented size; the output folder's rules; exports and --tta refused."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from vitclassifier.data.images import load_image
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.files import current_umask
from vitclassifier.inference import explain
from vitclassifier.inference.explain import MARKER, output_names, write_explanation
from vitclassifier.inference.loading import load_for_prediction
from vitclassifier.model.relevance import explain_batch, mistake_maps, upsample
from vitclassifier.reporting.heatmaps import GAP, MIN_COLUMN, panel_size


def name_of(path: str) -> str:
    return Path(path).name


def corner_images(count: int, square: bool, generator: torch.Generator) -> torch.Tensor:
    """32-px noise; with ``square``, a bright 8-px square in the top-left corner (normalised)."""
    pixels = torch.rand(count, 3, 32, 32, generator=generator) * 0.6
    if square:
        pixels[:, :, :8, :8] = 1.0
    return (pixels - 0.5) / 0.5


def tiny_classifier(seed: int):
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=2)
    return ViTForImageClassification(config)


def share_peaking_in_corner(model, images: torch.Tensor) -> float:
    """The share of images whose map for class 1 ("square") peaks in the top-left patch."""
    explained = explain_batch(model, images, lambda logits: torch.ones(len(logits), 1, dtype=torch.long))
    return (explained.maps[:, 0].flatten(1).argmax(1) == 0).float().mean().item()


@pytest.mark.slow
def test_the_map_peaks_on_the_evidence_and_not_once_the_weights_are_random():
    generator = torch.Generator().manual_seed(0)
    model = tiny_classifier(0)
    optimizer = torch.optim.AdamW(model.parameters(), 2e-3)
    labels = torch.tensor([0] * 16 + [1] * 16)
    for _ in range(30):  # the class is decided only by the square in the corner
        images = torch.cat([corner_images(16, False, generator), corner_images(16, True, generator)])
        loss = torch.nn.functional.cross_entropy(model(pixel_values=images).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = corner_images(32, True, generator)
    assert (model(pixel_values=test).logits.argmax(1) == 1).float().mean() > 0.9  # it learned the task
    assert share_peaking_in_corner(model, test) > 0.9
    assert model.config._attn_implementation == "sdpa"  # the eager attention was for the explaining pass only
    random_weights = tiny_classifier(1)  # the same model re-initialised
    assert share_peaking_in_corner(random_weights, test) < 0.3


def test_maps_cover_the_centre_crop_at_the_image_size():
    prep = Preprocessing(image_size=32, crop_pct=1.0)
    grid = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    wide = upsample(grid, 64, 32, prep)  # resized to 64 x 32, cropped to columns 16..47
    assert wide.shape == (32, 64) and wide.dtype == np.float32
    assert not wide[:, :16].any() and not wide[:, 48:].any() and (wide[:, 16:48] > 0).all()
    assert wide[0, 16] == pytest.approx(1.0) and wide[-1, 47] == pytest.approx(16.0)  # corners stay corners
    tall = upsample(grid, 10, 30, Preprocessing(image_size=32, crop_pct=0.875))
    assert tall.shape == (30, 10) and (tall >= 0).all()


def test_output_names_stay_unique(tmp_path):
    paths = [tmp_path / "a" / "cat.jpg", tmp_path / "b" / "cat.jpg", tmp_path / "c" / "Cat.jpg",
             tmp_path / "d" / "cat-2.jpg", tmp_path / "cat.png"]
    names = output_names(paths)
    assert names == ["cat.jpg", "cat-2.jpg", "Cat-3.jpg", "cat-2-2.jpg", "cat.png"]
    assert len({name.casefold() for name in names}) == len(names)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory, pattern_data):
    """A grayscale, an RGBA and an EXIF-rotated image, two files with the same name, one broken file."""
    root = tmp_path_factory.mktemp("explain-inputs")
    (root / "a").mkdir()
    (root / "b").mkdir()
    source = Image.open(pattern_data / "vertical" / "vertical_001.png")
    source.convert("L").resize((30, 50)).save(root / "a" / "gray.png")
    source.convert("RGBA").resize((45, 35)).save(root / "a" / "same.png")
    source.resize((36, 36)).save(root / "b" / "same.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 x 24, shown turned a quarter: 24 wide, 40 high
    source.resize((40, 24)).save(root / "b" / "turned.jpg", exif=exif)
    (root / "b" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.mark.slow
def test_predict_explain_writes_maps_and_pictures(trained_run, odd_images, tmp_path, capsys):
    out, report = tmp_path / "explanations", tmp_path / "report.json"
    code = predict.main(["--model", str(trained_run / "best"), "--image", str(odd_images), "--top-k", "2",
                         "--explain", str(out), "--json", str(report), "--batch-size", "2",
                         "--device", "cpu", "--precision", "fp32"])
    assert code == 1 and "broken.png" in capsys.readouterr().err  # the broken file is named, the rest done
    results = json.loads(report.read_text())["results"]
    sizes = {"gray.png": (30, 50), "same.png": (45, 35), "same-2.png": (36, 36), "turned.jpg": (24, 40)}
    assert sorted(name_of(r["explanation"]["maps"]) for r in results) == sorted(f"{n}.npy" for n in sizes)
    loaded = load_for_prediction(trained_run / "best", torch.device("cpu"), "fp32")
    for result in results:
        maps = np.load(result["explanation"]["maps"])
        width, height = sizes[name_of(result["explanation"]["maps"])[:-4]]
        assert maps.shape == (2, height, width) and maps.dtype == np.float32 and (maps >= 0).all()
        image = load_image(result["path"])
        assert image.size == (width, height)  # the image's own size, after EXIF orientation
        classes = torch.tensor([[loaded.labels.index(p["label"]) for p in result["predictions"]]])
        explained = explain_batch(loaded.model, eval_transform(loaded.prep)(image)[None],
                                  lambda _, chosen=classes: chosen)
        for plane, grid in zip(maps, explained.maps[0]):  # in the order of the image's predictions
            np.testing.assert_allclose(plane, upsample(grid.numpy(), width, height, loaded.prep),
                                       rtol=1e-4, atol=1e-6)
        column = max(panel_size(width, height)[0], MIN_COLUMN)
        with Image.open(result["explanation"]["picture"]) as picture:  # the image and its 2 maps
            assert picture.format == "JPEG" and picture.width == 3 * column + 2 * GAP
    assert (out / MARKER).is_file()


def test_files_are_written_on_a_thread_only_where_a_core_or_a_gpu_is_free(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for cores, device, kind in ((2, "cpu", explain.WriteAtOnce), (8, "cpu", ThreadPoolExecutor),
                                (2, "cuda", ThreadPoolExecutor)):
        monkeypatch.setattr(explain, "usable_cores", lambda cores=cores: cores)
        with explain.writer_for(torch.device(device)) as writer:
            assert isinstance(writer, kind)
            assert writer.submit(lambda a, b: a + b, 2, 3).result() == 5


@pytest.mark.slow
@pytest.mark.parametrize("writer", [explain.WriteAtOnce, lambda: ThreadPoolExecutor(max_workers=1)])
def test_a_failed_write_stops_the_run_with_its_own_error(trained_run, pattern_data, tmp_path, monkeypatch,
                                                         writer):
    """The files may be written on a thread: an error there (a full disk) must still end the run."""
    monkeypatch.setattr(explain, "writer_for", lambda device: writer())
    written = []

    def write_or_fail(folder, name, item, prep):
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        written.append(name)
        return write_explanation(folder, name, item, prep)

    monkeypatch.setattr(explain, "write_explanation", write_or_fail)
    loaded = load_for_prediction(trained_run / "best", torch.device("cpu"), "fp32")
    paths = sorted((pattern_data / "vertical").glob("*.png"))[:8]
    with pytest.raises(OSError, match="No space left"):
        explain.explain_to_folder(loaded, paths, 1, 2, "relevance", tmp_path / "out")
    assert written == [path.name for path in paths[:3]]  # in the input's order, then nothing more
    monkeypatch.setattr(explain, "write_explanation", write_explanation)
    results, failures = explain.explain_to_folder(loaded, paths, 1, 3, "relevance", tmp_path / "out")
    assert [r["path"] for r in results] == list(map(str, paths)) and not failures
    assert all(Path(r["explanation"]["maps"]).name == f"{Path(r['path']).name}.npy" for r in results)
    modes = {Path(r["explanation"][kind]).stat().st_mode & 0o777 for r in results
             for kind in ("maps", "picture")}
    assert modes == {0o666 & ~current_umask()}  # as a plain open makes them, as every file we write


def one_error_line(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_exports_and_tta_are_refused_in_one_line(tmp_path, capsys):
    export = tmp_path / "model.onnx"
    export.write_bytes(b"an export: no gradients")
    code = predict.main(["--model", str(export), "--image", str(tmp_path), "--explain", str(tmp_path / "x")])
    one_error_line(code, capsys.readouterr().err, "explanations need the checkpoint directory")
    code = predict.main(["--model", str(tmp_path), "--image", str(tmp_path), "--explain", str(tmp_path / "x"),
                         "--tta"])
    one_error_line(code, capsys.readouterr().err, "--tta")
    assert not (tmp_path / "x").exists()


def test_the_explain_folder_is_checked_before_any_work(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    argv = ["--model", str(tmp_path / "no-model"), "--image", str(images), "--explain"]
    one_error_line(predict.main([*argv, str(theirs)]), capsys.readouterr().err, "did not write", "notes.txt")
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    assert (theirs / "notes.txt").read_text() == "mine"
    one_error_line(predict.main([*argv, str(images / "maps")]), capsys.readouterr().err, "input folder")
    assert not (images / "maps").exists()


@pytest.mark.parametrize("given", ["file list", "glob"])
def test_the_explain_folder_never_goes_where_listed_or_globbed_inputs_are(tmp_path, capsys, given):
    cats = tmp_path / "photos" / "cat"
    cats.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(cats / name)
    listed = [str(cats / "a.png"), str(cats / "b.png")]
    images = listed if given == "file list" else [str(cats.parent / "*" / "*.png")]
    inside = cats / "maps" if given == "file list" else cats.parent / "maps"  # the next run would read it
    argv = ["--model", str(tmp_path / "no-model"), "--image", *images, "--explain"]
    one_error_line(predict.main([*argv, str(inside)]), capsys.readouterr().err, "input folder", str(inside))
    assert not inside.exists()
    predict.main([*argv, str(tmp_path / "maps")])  # elsewhere: allowed (then the missing model is the error)
    assert "input folder" not in capsys.readouterr().err


@pytest.mark.slow
def test_mistake_maps_for_the_chosen_and_the_true_class(trained_run, pattern_data):
    loaded = load_for_prediction(trained_run / "best", torch.device("cpu"), "fp32")
    path = pattern_data / "horizontal" / "horizontal_000.png"
    mistakes = [(str(path), 0, 2, 0.9), ("row 17 of a data set", 1, 0, 0.8)]
    maps = mistake_maps(loaded.model, loaded.prep, mistakes, loaded.device)
    chosen, true = maps[0]
    assert chosen.shape == true.shape == (40, 40) and not np.allclose(chosen, true)
    assert maps[1] is None  # not a file: the report shows that mistake without maps
