"""The library behind the commands train.py, predict.py, classifier.py, export.py and app.py.

Its layers (data/, model/, reporting/, export/, training/, inference/, ...) and the one direction
of their imports are drawn once, in project.md's "One import direction"; tests/test_layout.py checks
the code against that picture. No library module imports a command.

The public names (``PUBLIC``, also handed out by classifier.py) are imported on first use (PEP 562),
so ``import vitclassifier`` stays cheap: no torch or transformers until a name that needs them.
"""
from __future__ import annotations

import importlib

PUBLIC = {  # name -> the module that defines it
    "UserError": "vitclassifier.errors", "generate_data": "vitclassifier.data.synthetic",
    "PRESETS": "vitclassifier.model.vit", "create_model": "vitclassifier.model.vit",
    "freeze": "vitclassifier.model.vit",
    "ImageFolderDataset": "vitclassifier.data.dataset", "collate_skipping_bad": "vitclassifier.data.dataset",
    "fill_caches": "vitclassifier.data.dataset",
    "Preprocessing": "vitclassifier.data.transforms", "eval_transform": "vitclassifier.data.transforms",
    "list_images": "vitclassifier.data.folders", "load_splits": "vitclassifier.data.folders",
    "scan_class_folders": "vitclassifier.data.folders",
    "train_decode": "vitclassifier.data.augment", "BatchAugment": "vitclassifier.data.augment",
}
__all__ = list(PUBLIC)


def __getattr__(name: str):
    if name in PUBLIC:
        return getattr(importlib.import_module(PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *PUBLIC})  # the lazy names too, for tab completion
