"""The training options as one TrainConfig (config.py): a value that is not a usable number, or not of the
field's type, is refused in one place, naming the option."""
from __future__ import annotations

import pytest

from vitclassifier.config import TrainConfig
from vitclassifier.errors import UserError


@pytest.mark.parametrize("options, message", [
    ({"lr": float("inf")}, "finite"), ({"weight_decay": float("nan")}, "finite"),
    ({"head_lr": float("inf")}, "finite"), ({"mixup": float("inf")}, "finite"),
    ({"cutmix": 1e-300}, "--cutmix"), ({"num_workers": 200}, "--num-workers: at most"),
    ({"image_size": 100000}, "--image-size"), ({"batch_size": "7"}, "--batch-size '7' is not int"),
    ({"epochs": True}, "--epochs 'True' is not int"), ({"data": 5}, "--data '5' is not Path"),
])
def test_options_that_are_not_usable_numbers_are_refused_in_one_place(options, message):
    with pytest.raises(UserError, match=message):
        TrainConfig.from_options(options)

