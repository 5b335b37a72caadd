"""Curricula: stage boundaries, per-stage crops and noise, ablation arms, YAML multi-stage schedules."""

from __future__ import annotations

import math

import pytest
import yaml

from fdbench.errors import FdbenchError
from pretrain.curriculum import Curriculum, Stage, build_curriculum, load_curriculum_yaml, round_to_patch, stage_index


def _expected_two_stage(epochs: int, fraction: float = 0.75) -> list[tuple[int, int]]:
    # independent statement of the rule: boundary = floor(f * E + 1/2), then at least 1 epoch per stage
    b = math.floor(fraction * epochs + 0.5)
    if epochs >= 2:
        b = min(max(b, 1), epochs - 1)
    return [(0, b), (b, epochs)]


@pytest.mark.parametrize(
    "epochs,boundary", [(1, 1), (2, 1), (3, 2), (4, 3), (5, 4), (7, 5), (10, 8), (100, 75), (101, 76), (200, 150)]
)
def test_two_stage_boundaries(epochs, boundary):
    ranges = build_curriculum("two-stage").stage_epochs(epochs)
    assert ranges == _expected_two_stage(epochs)
    assert ranges[0][1] == boundary  # the hand-worked boundary
    assert ranges[-1][1] == epochs and ranges[0][0] == 0


def test_every_stage_gets_an_epoch_when_possible():
    c = build_curriculum("two-stage", stage1_fraction=0.99)
    assert c.stage_epochs(3) == [(0, 2), (2, 3)]  # round(2.97) = 3 would leave stage 2 empty
    c = build_curriculum("two-stage", stage1_fraction=0.01)
    assert c.stage_epochs(3) == [(0, 1), (1, 3)]
    three = Curriculum("p", [Stage("a", 0.1, 8, 8), Stage("b", 0.1, 8, 8), Stage("c", 0.8, 8, 8)])
    assert three.stage_epochs(3) == [(0, 1), (1, 2), (2, 3)]
    assert three.stage_epochs(10) == [(0, 1), (1, 2), (2, 10)]
    assert three.stage_epochs(0) == [(0, 0), (0, 0), (0, 0)]


def test_stage_index():
    c = build_curriculum("two-stage")
    assert [stage_index(c.stage_epochs(10), e) for e in range(10)] == [0] * 8 + [1] * 2
    assert stage_index(c.stage_epochs(10), 12) == 1  # past the end: the last stage
    assert stage_index(c.stage_epochs(1), 0) == 0  # 1 epoch: stage 2 is empty, never returned
    assert stage_index(c.stage_epochs(1), 5) == 0


def test_crop_sizes_and_noise_per_stage():
    c = build_curriculum("two-stage", global_size=224, local_size=96)
    low, full = c.stages
    assert (low.global_size, low.local_size) == (112, 48)
    assert (full.global_size, full.local_size) == (224, 96)
    assert (low.noise_patching, full.noise_patching) == (False, True)  # noise only where enabled
    assert full.noise_max_sigma == 0.5 and (low.fraction, full.fraction) == (0.75, 0.25)
    none = build_curriculum("none", global_size=224, local_size=96)
    assert len(none.stages) == 1 and none.stages[0].global_size == 224
    assert not none.stages[0].noise_patching and none.stage_epochs(7) == [(0, 7)]
    # explicit stage-1 sizes and other scales (the resolution ablation: 128 -> 224, 64 -> 224)
    c = build_curriculum("two-stage", stage1_global_size=128, stage1_local_size=56)
    assert (c.stages[0].global_size, c.stages[0].local_size) == (128, 56)
    c = build_curriculum("two-stage", stage1_scale=64 / 224)
    assert (c.stages[0].global_size, c.stages[0].local_size) == (64, 27)  # 96 * 2/7 = 27.4
    small = build_curriculum("two-stage", global_size=64, local_size=32, n_local=4)
    assert (small.stages[0].global_size, small.stages[0].local_size, small.stages[0].n_local) == (32, 16, 4)


def test_both_ablation_arms():
    curriculum_only = build_curriculum("two-stage", noise_patching=False)
    assert [s.noise_patching for s in curriculum_only.stages] == [False, False]
    assert curriculum_only.stages[0].global_size == 112
    patching_only = build_curriculum("none", noise_patching=True, noise_max_sigma=0.3)
    assert [s.noise_patching for s in patching_only.stages] == [True]
    assert patching_only.stages[0].noise_max_sigma == 0.3 and patching_only.stages[0].global_size == 224
    # forcing it on keeps it out of the low-resolution stage
    assert [s.noise_patching for s in build_curriculum("two-stage", noise_patching=True).stages] == [False, True]


def test_round_to_patch():
    assert round_to_patch(112, 16) == 112 and round_to_patch(48, 16) == 48
    assert round_to_patch(48, 14) == 42  # 3.43 patches -> 3
    assert round_to_patch(56, 16) == 64  # 3.5 patches: halves round up
    assert round_to_patch(3, 16) == 16  # never below one patch


def test_yaml_three_step_progressive(tmp_path):
    path = tmp_path / "progressive.yaml"
    path.write_text(
        "stages:\n"
        "  - {name: low, fraction: 0.5, global_size: 112, local_size: 48}\n"
        "  - {name: mid, fraction: 0.25, global_size: 160, local_size: 64, n_local: 6}\n"
        "  - {name: full, fraction: 0.25, global_size: 224, local_size: 96, noise_patching: true,\n"
        "     noise_max_sigma: 0.4, global_scale: [0.4, 1.0]}\n"
    )
    c = load_curriculum_yaml(path)
    assert c.name == "progressive"  # the file stem when no name is given
    assert [s.global_size for s in c.stages] == [112, 160, 224]
    assert [s.local_size for s in c.stages] == [48, 64, 96]
    assert [s.noise_patching for s in c.stages] == [False, False, True]
    assert c.stages[1].n_local == 6 and c.stages[2].global_scale == (0.4, 1.0)
    assert c.stage_epochs(8) == [(0, 4), (4, 6), (6, 8)]
    assert c.stage_epochs(10) == [(0, 5), (5, 8), (8, 10)]  # 7.5 rounds up to 8
    # round trip through to_dict / YAML / from_dict
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(c.to_dict()))
    assert load_curriculum_yaml(again) == c
    assert Curriculum.from_dict(c.to_dict()) == c
    # a bare list of stages works too
    bare = tmp_path / "bare.yml"
    bare.write_text(
        "- {fraction: 0.6, global_size: 32, local_size: 16}\n- {fraction: 0.4, global_size: 64, local_size: 32}\n"
    )
    assert [s.name for s in load_curriculum_yaml(bare).stages] == ["stage1", "stage2"]


@pytest.mark.parametrize(
    "text,match",
    [
        ("stages:\n  - {name: a, fraction: 0.5, global_size: 32, local_size: 16}\n", "sum to 0.5"),
        ("stages:\n  - {name: a, fraction: 1.0, global_size: 32}\n", "missing local_size"),
        ("stages:\n  - {name: a, fraction: 1.0, global_size: 32, local_size: 16, colour: red}\n", "unknown"),
        ("stages:\n  - {name: a, fraction: 1.0, global_size: big, local_size: 16}\n", "wrong type"),
        (
            "stages:\n  - {name: a, fraction: 1.0, global_size: 32, local_size: 16, local_scale: [0.5, 0.1]}\n",
            "local_scale",
        ),
        ("stages: []\n", "no stages"),
        ("stages: [oops\n", "not valid YAML"),
        ("42\n", "mapping"),
    ],
)
def test_yaml_errors_are_one_line(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FdbenchError, match=match) as info:
        load_curriculum_yaml(path)
    assert "\n" not in str(info.value)


def test_bad_names_and_options():
    with pytest.raises(FdbenchError, match="none, two-stage"):
        build_curriculum("three-stage")
    with pytest.raises(FdbenchError, match="fraction"):
        build_curriculum("two-stage", stage1_fraction=1.0)
    with pytest.raises(FdbenchError, match="scale"):
        build_curriculum("two-stage", stage1_scale=0.0)
    with pytest.raises(FdbenchError, match="not found"):
        load_curriculum_yaml("/nonexistent/curriculum.yaml")
    with pytest.raises(FdbenchError, match="epochs"):
        build_curriculum("none").stage_epochs(-1)


def test_two_stage_epochs_sizes_and_noise():
    c = build_curriculum("two-stage")
    low, full = c.stages
    assert c.stage_epochs(10) == [(0, 8), (8, 10)]
    assert (low.name, low.global_size, low.local_size, low.noise_patching) == ("low-res", 112, 48, False)
    assert (full.name, full.global_size, full.local_size, full.noise_patching) == ("full-res", 224, 96, True)
