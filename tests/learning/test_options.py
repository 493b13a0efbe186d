"""The fixed choices of the learning commands: the preset names follow the preset table,
and a wrong value is a usage error that lists the right ones."""

from __future__ import annotations

import pytest

from datatool.core.errors import UsageError
from datatool.learning.options import (
    DEFAULT_PRESET,
    LossName,
    PresetName,
    SelectionName,
    Stratify,
    choice,
)
from tests.ci import require


def test_preset_names_are_the_preset_table():
    require("torch")
    from datatool.model import PRESETS

    assert {p.value for p in PresetName} == set(PRESETS)
    assert DEFAULT_PRESET == "paper"  # the study's, everywhere


def test_loss_names_are_the_model_s_losses():
    require("torch")
    from datatool.model import LOSSES, PRESETS

    assert [m.value for m in LossName] == list(LOSSES)
    assert {p.loss for p in PRESETS.values()} <= set(LOSSES)
    assert PRESETS["paper"].loss == "ce"  # the study's recipe


def test_selection_names_are_the_model_s_selection_rules():
    require("torch")
    from datatool.model import PRESETS, SELECTIONS

    assert [m.value for m in SelectionName] == list(SELECTIONS)
    assert {p.selection for p in PRESETS.values()} <= set(SELECTIONS)
    assert PRESETS["paper"].selection == "miou" and PRESETS["paper"].val_every == 1


def test_choice_takes_strings_and_members_and_names_the_choices():
    assert choice(Stratify, "sex", "--stratify") is Stratify.sex
    assert choice(Stratify, Stratify.side, "--stratify") is Stratify.side
    with pytest.raises(UsageError, match=r"--stratify must be one of sex, side, not 'age'"):
        choice(Stratify, "age", "--stratify")
