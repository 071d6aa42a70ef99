"""The parts of the deep audit on their own: the neighbour search (blocks, faiss), near-duplicate
pairs, thumbnails, outliers and the embedding cache's checks. No model needed."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

from vitclassifier.deep_audit import cache, neighbours
from vitclassifier.deep_audit.embedding import thumbnail_vector, unit_rows
from vitclassifier.deep_audit.findings import outliers
from vitclassifier.deep_audit.outputs import MARKER, claim_folder, default_folder
from vitclassifier.errors import UserError


def random_unit(count: int, width: int = 16, seed: int = 0) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((count, width)).astype(np.float32))


def brute_force(unit: np.ndarray, k: int) -> np.ndarray:
    similarities = unit @ unit.T
    np.fill_diagonal(similarities, -np.inf)
    return np.argsort(-similarities, axis=1, kind="stable")[:, :k]


def test_the_block_search_finds_the_true_neighbours(monkeypatch):
    unit = random_unit(300)
    monkeypatch.setattr(neighbours, "CHUNK_ELEMENTS", 300 * 7)  # blocks of 7 rows, the last one short
    found = neighbours.nearest_neighbours(unit, 5)
    assert np.array_equal(found.indices, brute_force(unit, 5))
    assert np.allclose(found.similarities, np.take_along_axis(unit @ unit.T, found.indices, 1), atol=1e-5)
    assert neighbours.nearest_neighbours(unit[:1], 5).indices.shape == (1, 0)  # nobody to be near


@pytest.mark.skipif(not importlib.util.find_spec("faiss"), reason="faiss-cpu is an optional extra")
def test_faiss_finds_what_the_block_search_finds(monkeypatch):
    unit = random_unit(500)
    unit[10] = unit[3]  # an exact copy: its twin may come first, itself must never be listed
    blocks = neighbours.nearest_neighbours(unit, 4)
    monkeypatch.setattr(neighbours, "FAISS_FROM", 100)
    searched = neighbours.nearest_neighbours(unit, 4)
    assert (searched.indices != np.arange(500)[:, None]).all()
    assert searched.indices[3, 0] == 10 and searched.indices[10, 0] == 3
    assert np.allclose(searched.similarities, blocks.similarities, atol=1e-5)
    assert (searched.indices == blocks.indices).mean() > 0.99  # float rounding may swap near-ties


def test_near_duplicates_by_embedding_or_by_thumbnail_but_not_two_blanks():
    embeddings, raw = random_unit(50, seed=1), random_unit(50, seed=2)
    embeddings[7] = unit_rows(embeddings[3:4] + 0.01)[0]  # the model sees the same thing
    raw[20] = unit_rows(raw[11:12] + 0.01)[0]  # the same picture, recompressed
    raw[[30, 31]] = 0  # two blank pictures (thumbnail_vector gives them zeros)
    thumbnails = neighbours.pixel_view(raw)
    assert thumbnails[30] @ thumbnails[31] == 1 and thumbnails[30] @ thumbnails[0] == 0
    pairs = neighbours.near_duplicates(embeddings, thumbnails, 0.99, 0.98,
                                       neighbours.nearest_neighbours(embeddings, 5),
                                       neighbours.nearest_neighbours(thumbnails, 5))
    assert [(pair.first, pair.second) for pair in pairs] in ([(3, 7), (11, 20)], [(11, 20), (3, 7)])
    assert all(max(pair.cosine, pair.pixel_similarity) >= 0.98 for pair in pairs)


def test_thumbnails_ignore_size_and_brightness_and_blank_pictures_match_nothing():
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64))
    small, brighter = picture.resize((40, 40)), Image.eval(picture, lambda v: min(255, v + 20))
    base = unit_rows(thumbnail_vector(picture)[None])[0]
    for other in (small, brighter):
        assert base @ unit_rows(thumbnail_vector(other)[None])[0] > 0.97
    blank = Image.fromarray((np.full((40, 40, 3), 90) + rng.normal(0, 3, (40, 40, 3))).astype(np.uint8))
    assert not thumbnail_vector(blank).any()


def test_outliers_are_the_scores_far_above_the_typical_one_in_either_view():
    rng = np.random.default_rng(0)
    model, pixels = rng.normal(0.2, 0.01, 200), rng.normal(0.5, 0.05, 200)
    model[[5, 50]] = 0.5, 0.9
    pixels[[50, 7]] = 0.9, 1.5
    found = outliers({"model": model, "pixels": pixels})
    assert [(i, view) for i, _, view in found] == [(50, "model"), (5, "model"), (7, "pixels")]
    assert found[0][1] > found[1][1] > found[2][1] > 5
    assert outliers({"model": np.full(100, 0.3)}) == [] and outliers({"model": model[:2]}) == []


def test_a_cache_is_used_only_when_every_check_passes(tmp_path, capsys):
    keys = [bytes([i]) * cache.HASH_BYTES for i in range(3)]
    vectors, thumbnails = np.ones((3, 4)), np.zeros((3, cache.THUMBNAIL_SIZE))
    path = cache.cache_path(tmp_path, "model-a")
    cache.save_cache(path, "model-a", keys, vectors, thumbnails)
    loaded = cache.load_cache(path, "model-a")
    assert loaded.rows == {key: row for row, key in enumerate(keys)} and loaded.vectors.shape == (3, 4)
    assert cache.load_cache(path, "model-b").rows == {}  # another model's embeddings
    assert "made by another model" in capsys.readouterr().err
    with np.load(path) as arrays:
        parts = dict(arrays)
    parts["vectors"] = parts["vectors"] * 2  # changed after writing, checksum left as it was
    np.savez(path, **parts)
    assert cache.load_cache(path, "model-a").rows == {}
    assert "checksum" in capsys.readouterr().err
    path.write_bytes(b"not a cache")
    assert cache.load_cache(path, "model-a").rows == {}
    assert "ignoring the embedding cache" in capsys.readouterr().err


def test_a_missing_cleanlab_is_one_line_naming_the_extras(monkeypatch):
    import sys

    from vitclassifier.deep_audit.findings import require_libraries
    from vitclassifier.errors import UserError
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # what an uninstalled package looks like to import
    with pytest.raises(UserError, match="requirements-extras.txt") as error:
        require_libraries()
    assert "cleanlab" in str(error.value) and "\n" not in str(error.value)


def test_the_audit_folder_never_goes_among_a_label_file_s_images(tmp_path):
    images = tmp_path / "kaggle" / "images"
    images.mkdir(parents=True)
    labels = tmp_path / "kaggle" / "train.csv"
    labels.write_text("file,label\nimages/a.png,cat\n")
    samples = [images / "a.png", "row 3 of a dataset"]  # only files have a folder
    for inside in (images, images / "audit"):
        with pytest.raises(UserError, match="--audit-out .* would write into an image folder of the data"):
            claim_folder(inside, labels, samples)
    assert not (images / "audit").exists()
    claim_folder(default_folder(labels), labels, samples)  # beside the label file: kaggle/train-audit
    assert (tmp_path / "kaggle" / "train-audit" / MARKER).is_file()
