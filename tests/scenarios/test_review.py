"""app.py --review for real (active/review.py): the server runs on a free loopback port, headless
Chromium confirms one suggestion with Enter and corrects another with a class's number key, and the
label file holds both answers, as train.py reads it, after a reload and a killed server."""
from __future__ import annotations

import importlib.util
import os
import signal

import pytest
from helpers import CHROMIUM, start_app
from PIL import Image

from vitclassifier import tables
from vitclassifier.data.labelfile import read_label_file

pytestmark = pytest.mark.slow  # a server process and a browser
CLASSES = ["cat", "dog", "fox"]


def suggestions(tmp_path):
    """Three images in project/images, suggested as cat, dog, cat in suggestions/suggestions.csv."""
    images = tmp_path / "project" / "images"
    images.mkdir(parents=True)
    for number, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (40, 40), colour).save(images / f"img{number}.png")
    folder = tmp_path / "suggestions"
    folder.mkdir()
    rows = [[f"../project/images/img{n}.png", label, 0.5, f"reason {n}"]
            for n, label in enumerate(["cat", "dog", "cat"])]
    tables.write_csv(folder / "suggestions.csv", [["path", "suggested_label", "confidence", "why"], *rows])
    (folder / "suggestions.json").write_text('{"classes": ["cat", "dog", "fox"]}\n')
    return folder / "suggestions.csv", tmp_path / "project" / "labels.csv"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs the extras")
def test_confirm_one_correct_one_with_a_key_and_the_file_keeps_both(tmp_path):
    from playwright.sync_api import sync_playwright
    review, labels = suggestions(tmp_path)
    process, url = start_app(["--review", str(review), "--labels-out", str(labels)], tmp_path / "server.log")
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 800})
                page.goto(url)
                page.get_by_text("0 of 3 answered").wait_for(timeout=60_000)
                assert page.locator("#review-suggestion").inner_text() == "cat"
                page.keyboard.press("Enter")  # confirm img0 as cat
                page.get_by_text("1 of 3 answered").wait_for(timeout=30_000)
                assert page.locator("#review-suggestion").inner_text() == "dog"
                page.keyboard.press("3")  # correct img1: fox, not dog
                page.get_by_text("2 of 3 answered").wait_for(timeout=30_000)
                page.reload()  # a closed and reopened page starts where it stopped
                page.get_by_text("2 of 3 answered").wait_for(timeout=60_000)
                assert "img2.png" in page.locator("#review-status").inner_text()
            finally:
                browser.close()
    finally:
        os.kill(process.pid, signal.SIGKILL)  # no clean shutdown: the answers are on disk already
        process.wait(timeout=30)
    classes, _ = read_label_file(labels)  # as train.py --data labels.csv reads it
    images = labels.parent / "images"
    assert classes == {"cat": [images / "img0.png"], "fox": [images / "img1.png"]}
