"""Nothing a model file holds makes anyone contact anyone: class names that are HTML or
Markdown stay text in the web page (Chromium must make no request for them), and a training state
that names a tracking server is not obeyed on --resume. A local listener records every request."""
from __future__ import annotations

import importlib.util
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from helpers import CHROMIUM, CLASSES, start_app

import train

pytestmark = pytest.mark.slow  # a server process and a browser, or a resumed training run


@pytest.fixture
def listener():
    """A local HTTP server recording the path of every request it gets; yields (its URL, the paths)."""
    seen: list[str] = []

    class Record(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_POST = do_PUT = do_GET  # noqa: N815

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_html_class_names_are_text_in_the_page(tiny_vit, listener, tmp_path):
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("needs the extras: pip install -r requirements-extras.txt")
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install playwright")
    from vitclassifier.model.checkpoint import save_model
    from vitclassifier.model.vit import create_model
    host, seen = listener
    names = [f'<img src="{host}/beacon.png">', f'<a href="{host}/phish">Click to log in</a>',
             f"![x]({host}/md.png) **${{1+1}}**"]
    model, prep = create_model(str(tiny_vit), names)
    save_model(model, prep, tmp_path / "hostile")
    from PIL import Image
    Image.new("RGB", (40, 40), (30, 90, 200)).save(tmp_path / "upload.png")
    hostile = ["--model", str(tmp_path / "hostile"), "--device", "cpu"]
    process, url = start_app(hostile, tmp_path / "server.log")
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"])
            try:
                page = browser.new_page()
                page.goto(url)
                info = page.locator("#model-info")
                info.wait_for(timeout=60_000)
                assert ", ".join(names) in info.inner_text()  # shown as written
                assert info.locator("img, a, strong").count() == 0
                page.locator("input[type=file]").set_input_files([str(tmp_path / "upload.png")])
                shown = page.locator(".vit-label")
                shown.first.wait_for(timeout=60_000)
                assert shown.first.inner_text() in names  # the top label, as written
                assert page.locator(".vit-label img, .vit-label a, .vit-label strong").count() == 0
                page.wait_for_load_state("networkidle")
                time.sleep(1)
            finally:
                browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert seen == []  # no beacon, no image, nothing


def test_resume_sends_nothing_to_a_tracking_server_named_by_the_save(trained_run, listener, tmp_path, capsys):
    """A run folder from elsewhere names a tracking server in its training state; resuming it must
    neither connect there nor fail: tracking is this command line's choice only."""
    pytest.importorskip("mlflow", reason="needs the extras: pip install -r requirements-extras.txt")
    host, seen = listener
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "last" / "training_state.pt"
    state = torch.load(path, weights_only=True)
    state["options"].update(track="mlflow", tracking_uri=host, epochs=state["epoch"])  # one epoch left
    state["finished"] = False
    torch.save(state, path)
    assert train.main(["--resume", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"--epochs {state['epoch']}" in out and host not in out
    assert seen == []
    assert json.loads((run / "best" / "training_info.json").read_text())["labels"] == CLASSES
