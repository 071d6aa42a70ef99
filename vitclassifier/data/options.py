"""classifier.py's options (--generate-data, --check-data with its deep audit, --to-shards), declared
once as fields: vitclassifier/options.py builds the parser and checks them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitclassifier.cli import DEVICES
from vitclassifier.config import DATA_FORMATS, TASKS
from vitclassifier.data.synthetic import DEFAULT_CLASSES, SHAPES, at_least, parse_classes
from vitclassifier.options import field_problems, option, type_problems
from vitclassifier.urls import data_location

FORMS = "data forms (--check-data) and --to-shards options"
GENERATE, CHECK = "--generate-data options", "--check-data options"
DEEP = "--check-data --model options: the deep audit (docs/audit.md)"
SUGGEST = "--suggest-labels options: what to label next (docs/active-learning.md)"
SIMILARITY = "--duplicate-threshold and --pixel-threshold are cosine similarities above 0, at most 1"


@dataclass(kw_only=True)
class CheckDataConfig:
    """What classifier.py is asked: one of its three commands, and their options."""
    generate_data: bool = option(
        "write a synthetic shapes data set (one sub-folder per class) and sample images; files it did not "
        "write itself are never replaced", False, exclusive="command")
    check_data: Path | str | None = option(
        "audit a data set as train.py will read it: class counts, unreadable, small and duplicate files, "
        "class imbalance; with --model also near-duplicates, suspected label errors and outliers. Exit code "
        "1 if training is impossible", None, metavar="DIR", exclusive="command", type=data_location)
    to_shards: list[Path] | None = option(
        "write the class folder DIR as WebDataset tar shards into the new folder OUT (train-*.tar, "
        "val-*.tar, index.json), split by --val-split and --split-seed as train.py splits it", None, nargs=2,
        metavar=("DIR", "OUT"), exclusive="command")
    suggest_labels: Path | None = option(
        "suggest which images of POOL (a folder of unlabelled images, or a label file whose unlabelled rows "
        "have an empty label) to label next: uncertain by the --model's calibrated confidences, spread out "
        "over its embeddings, near-duplicates of labelled images left out; writes suggestions.csv, a "
        "contact sheet and the history of rounds", None, metavar="POOL", exclusive="command")
    data_format: str = option("the form of the data (auto: told from the path; see docs/data-formats.md)",
                              "auto", choices=DATA_FORMATS, group=FORMS)
    image_column: str | None = option("label files, HF datasets: the image column", None, group=FORMS)
    label_column: str | None = option("label files, HF datasets: the label column", None, group=FORMS)
    task: str = option("single-label: one class per image; multi-label: several labels per image "
                       "(docs/multi-label.md); auto: told from the data", "auto", choices=TASKS, group=FORMS)
    label_separator: str = option("label files: the separator of several labels in one cell", ";",
                                  group=FORMS)
    shard_size: int = option("--to-shards: images per shard", 1000, type=at_least(1), group=FORMS)
    image_size: int | None = option(
        "--generate-data: side of each image in pixels (default: 64); --check-data: images with a shorter "
        "side are reported (default: the --model's input size; without --model, sizes are not judged)", None,
        type=at_least(16), metavar="N")
    out: Path = option("where to write the data set", Path("data"), group=GENERATE)
    classes: list[str] | str = option(  # text until argparse parses it (parse_classes)
        f"comma-separated shapes, or a count; available: {', '.join(SHAPES)}", DEFAULT_CLASSES,
        type=parse_classes, group=GENERATE)
    multi_label: bool = option("--generate-data: scenes of 0 to 3 shapes labelled with the shapes present "
                               "(--per-class x classes scenes, a label file OUT/labels.csv)", False,
                               group=GENERATE)
    per_class: int = option("images per class", 1200, type=at_least(2), group=GENERATE)
    seed: int = option("random seed; same seed, same files", 0, group=GENERATE)
    samples_dir: Path = option("where sample.jpg, samples/ go", Path("."), group=GENERATE)
    val_split: float = option(
        "fraction of each class held out for validation; must match train.py's --val-split (ignored with "
        "train/ and val/ folders)", 0.2, group=CHECK, above=0, below=1,
        problem="--val-split must be between 0 and 1, got {value}")
    split_seed: int = option("seed of the train/validation split; must match train.py's --seed", 42,
                             group=CHECK)
    json: str | None = option("also write the report as JSON ('-' for stdout)", None, metavar="FILE",
                              group=CHECK)
    model: str | None = option(
        "embed every image with this model (a trained checkpoint such as checkpoints/best, a preset or a "
        "Hugging Face id) and report near-duplicates, suspected label errors and outliers: suspects to "
        "review, not verdicts", None, metavar="CKPT|PRESET|HUB-ID", group=DEEP)
    audit_out: Path | None = option("where the CSV files, pictures, report.json and the embedding cache go "
                                    "(default: DIR-audit beside the data)", None, metavar="DIR", group=DEEP)
    folds: int = option("folds of the out-of-fold linear classifier behind the suspected label errors", 5,
                        type=at_least(2), group=DEEP)
    duplicate_threshold: float = option(
        "near-duplicates: cosine similarity of the embeddings from which two images count", 0.995, group=DEEP,
        above=0, at_most=1, problem=SIMILARITY)
    pixel_threshold: float = option(
        "near-duplicates: cosine similarity of 8x8 colour thumbnails from which two images count (resized, "
        "recompressed or slightly cut copies)", 0.99, group=DEEP, above=0, at_most=1, problem=SIMILARITY)
    batch_size: int = option("images embedded at once", 64, type=at_least(1), group=DEEP)
    device: str = option("where to run; auto picks a GPU when there is one", "auto", choices=DEVICES,
                         group=DEEP)

    budget: int = option("--suggest-labels: how many images to suggest", 50, type=at_least(1), group=SUGGEST)
    labelled: Path | str | None = option(
        "--suggest-labels: the data already labelled, in any form train.py takes (its near-duplicates are "
        "left out of the suggestions, and suggestions go far from it)", None, metavar="DATA",
        type=data_location, group=SUGGEST)
    uncertainty: str = option("--suggest-labels: margin (1 - the top two confidences' difference) or entropy",
                              "margin", choices=["margin", "entropy"], group=SUGGEST)
    suggest_out: Path | None = option(
        "--suggest-labels: where suggestions.csv, suggestions.png, rounds.csv and rounds.png go (default: "
        "POOL-suggestions beside the pool; keep it from round to round for the history)", None,
        metavar="DIR", group=SUGGEST)

    def problems(self) -> list[str]:
        """What is wrong with these options, one sentence each naming the option."""
        wrong = type_problems(self) or field_problems(self)
        if not wrong and not self.suggest_labels and (self.labelled or self.suggest_out):
            wrong = ["--labelled and --suggest-out go with --suggest-labels POOL"]
        return wrong
