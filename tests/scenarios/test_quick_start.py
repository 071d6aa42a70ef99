"""The offline quick start as a new user meets it: classifier.py --generate-data runs without loading
torch, writes files with the mode the umask gives, and the front door still hands out the library."""
from __future__ import annotations

import subprocess
import sys

from helpers import ROOT

from vitclassifier.files import current_umask


def test_generating_data_loads_no_torch_and_the_front_door_still_hands_out_the_library(tmp_path):
    script = ("import sys, classifier\n"
              "code = classifier.main(['--generate-data', '--per-class', '2', '--image-size', '16',"
              f" '--out', {str(tmp_path / 'data')!r}, '--samples-dir', {str(tmp_path)!r}])\n"
              "assert code == 0 and 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
              "from classifier import create_model, ImageFolderDataset, eval_transform\n"
              "assert callable(create_model) and 'torch' in sys.modules\n"
              "assert set(classifier.__all__) >= {'generate_data', 'create_model', 'load_splits'}\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    generated = list((tmp_path / "data").rglob("*.jpg"))
    assert len(generated) == 2 * 5
    assert {path.stat().st_mode & 0o777 for path in generated} == {0o666 & ~current_umask()}
