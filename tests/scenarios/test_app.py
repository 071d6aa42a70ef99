"""app.py and its page (inference/webapp.py) for real: the server runs as `python app.py` on a free
loopback port, gradio_client calls its API and headless Chromium uses the page; results are checked
against predict.py's."""
from __future__ import annotations

import contextlib
import html
import importlib.util
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import CHROMIUM, CLASSES, start_app
from PIL import Image

import app
import predict
from vitclassifier.inference.webapp import failure_text
from vitclassifier.reporting.heatmaps import panel_size

gradio_client = pytest.importorskip("gradio_client",
                                    reason="needs the extras: pip install -r requirements-extras.txt")
pytestmark = pytest.mark.slow  # a server process, a trained checkpoint, a browser


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    """Where the server fixture's process writes its output."""
    return tmp_path_factory.mktemp("app") / "server.log"


@pytest.fixture(scope="module")
def server(trained_run, server_log):
    """`python app.py` serving the trained checkpoint; yields its URL, stops it afterwards."""
    if importlib.util.find_spec("gradio") is None:  # not imported here: that alone takes seconds
        pytest.skip("needs the extras: pip install -r requirements-extras.txt")
    process, url = start_app(["--model", str(trained_run / "best"), "--top-k", "2"], server_log)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def uploads(pattern_data, tmp_path_factory):
    """One image per class and a .jpg file that only pretends to be an image."""
    folder = tmp_path_factory.mktemp("uploads")
    for name in CLASSES:
        shutil.copy(pattern_data / name / f"{name}_005.png", folder / f"{name}.png")
    (folder / "broken.jpg").write_text("this is not a picture")
    return folder


def expected(trained_run, paths: list[Path], top_k: int) -> list[dict]:
    """What `python predict.py --json -` says about ``paths``."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert predict.main(["--model", str(trained_run / "best"), "--image", *map(str, paths),
                             "--top-k", str(top_k), "--device", "cpu", "--json", "-"]) == 0
    return json.loads(output.getvalue())["results"]


def test_client_gets_the_same_predictions_as_predict(server, uploads, trained_run):
    paths = [uploads / f"{name}.png" for name in CLASSES]
    client = gradio_client.Client(server, verbose=False)
    files = [gradio_client.handle_file(str(p)) for p in paths]
    results, errors = client.predict(files, 2, api_name="/classify")
    assert errors == ""
    assert [r["name"] for r in results] == [p.name for p in paths]
    for ours, theirs in zip(results, expected(trained_run, paths, 2)):
        assert [p["label"] for p in ours["predictions"]] == [p["label"] for p in theirs["predictions"]]
        assert [p["confidence"] for p in ours["predictions"]] == pytest.approx(
            [p["confidence"] for p in theirs["predictions"]], abs=1e-5)


def test_a_bad_upload_is_reported_and_the_rest_still_classified(server, uploads):
    client = gradio_client.Client(server, verbose=False)
    files = [gradio_client.handle_file(str(uploads / name)) for name in ("broken.jpg", "plain.png")]
    results, errors = client.predict(files, 3, api_name="/classify")
    assert [r["name"] for r in results] == ["plain.png"] and len(results[0]["predictions"]) == 3
    assert "1 of 2 upload(s) failed" in errors and "broken.jpg" in errors and "could not be read" in errors
    results, errors = client.predict([], 3, api_name="/classify")  # nothing uploaded: nothing shown, no error
    assert results == [] and errors == ""


def test_top_k_above_the_class_count_is_capped_without_a_traceback(server, server_log, uploads, trained_run):
    client = gradio_client.Client(server, verbose=False)
    results, errors = client.predict([gradio_client.handle_file(str(uploads / "plain.png"))], 10,
                                     api_name="/classify")
    assert errors == "" and len(results[0]["predictions"]) == len(CLASSES)  # capped, as predict.py caps it
    assert [p["label"] for p in results[0]["predictions"]] == [
        p["label"] for p in expected(trained_run, [uploads / "plain.png"], len(CLASSES))[0]["predictions"]]
    log = server_log.read_text()
    assert "Traceback" not in log, log
    assert "--share" in log and "share=True" not in log  # the start-up text speaks of app.py's options


def test_the_api_shows_where_the_model_looked(server, uploads):
    client = gradio_client.Client(server, verbose=False)
    files = [gradio_client.handle_file(str(uploads / f"{name}.png")) for name in CLASSES]
    plain, _ = client.predict(files, 2, False, api_name="/classify")
    shown, errors = client.predict(files, 2, True, api_name="/classify")
    assert errors == "" and all("heatmap" not in r for r in plain)
    for with_map, without in zip(shown, plain):
        assert [p["label"] for p in with_map["predictions"]] == [p["label"] for p in without["predictions"]]
        with Image.open(with_map["heatmap"]) as heatmap:  # the server runs on this machine: its file
            assert heatmap.mode == "RGB" and heatmap.size == panel_size(40, 40)  # the uploads are 40 px


def test_an_upload_name_holding_markup_is_shown_as_text(tmp_path):
    name = "[prize](javascript:alert(1)) <img src=x onerror=alert(1)> www.evil.example **x**.png"
    text = failure_text([(str(tmp_path / name), f"cannot identify image file {str(tmp_path / name)!r}")], 2)
    tags = []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attributes: tags.append(tag)
    parser.feed(text)
    assert tags == ["p", "strong", "ul", "li", "strong"]  # no link, no image: the page shows the name
    assert html.unescape(text).count(name) == 2 and str(tmp_path) not in text  # named, not its server path


def test_a_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert app.main(["--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a trained checkpoint" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_page_in_a_browser(server, uploads, trained_run, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="needs playwright (pip install playwright)")
    vertical = uploads / "vertical.png"
    top_2 = expected(trained_run, [vertical], 2)[0]["predictions"]  # the server was started with --top-k 2
    with playwright.sync_playwright() as driver:
        # the flags keep Chromium from calling Google's services, which this offline machine refuses
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server)
            page.locator("input[type=file]").set_input_files([str(vertical), str(uploads / "broken.jpg")])
            shown = page.locator(".vit-label")
            shown.first.wait_for(timeout=60_000)
            assert shown.all_inner_texts() == [p["label"] for p in top_2]
            # one bar per label, its percentage with one decimal
            bars = page.locator(".vit-confidence").all_inner_texts()
            assert bars == [f"{p['confidence'] * 100:.1f}%" for p in top_2]
            page.get_by_text("1 of 2 upload(s) failed").wait_for(timeout=10_000)
            assert "broken.jpg" in page.locator("#errors").inner_text()
            assert page.locator(".vit-heatmap img").count() == 0
            page.get_by_label("Show where the model looked").check()
            heatmap = page.locator(".vit-heatmap img")
            heatmap.first.wait_for(timeout=60_000)  # the top class's map, beside the image
            width = heatmap.first.evaluate("image => image.naturalWidth")
            assert heatmap.count() == 1 and width == panel_size(40, 40)[0]
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'app.png'}")
