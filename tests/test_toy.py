"""Proof of mechanism, small: a VMix adapter trained by the real trainer on a toy problem moves each labelled
property in its direction, beyond seed noise, and further as λ grows (python -m vmix_train.toy --quick)."""

from __future__ import annotations

import pytest
from PIL import Image

from vmix_ext.weights import read_header
from vmix_train.toy import LAMBDAS, QUICK, run_toy


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_toy(tmp_path_factory.mktemp("toy"), QUICK, log=lambda _: None)


@pytest.mark.parametrize("name", ["bright", "warm"])
def test_switching_a_dimension_on_moves_its_property_beyond_seed_noise(result, name):
    # noise is the standard error of one setting's mean over its 64 seeds; the settings share seeds, so this
    # unpaired figure overstates the noise of a difference.
    assert result.on[name] - result.off[name] > 4 * result.noise[name], (result.off, result.on, result.noise)
    assert result.off[name] < result.base[name] < result.on[name]


@pytest.mark.parametrize("name", ["bright", "warm"])
def test_the_property_grows_with_lambda(result, name):
    sweep = dict(zip(LAMBDAS, result.sweep[name], strict=True))
    assert sweep[0.0] == pytest.approx(result.base[name], abs=1e-6)  # λ = 0 is the base model
    assert sweep[0.0] < sweep[0.5] < sweep[1.0], sweep
    assert sweep[1.0] - sweep[0.0] > 4 * result.noise[name], sweep
    # Past the training value the toy may saturate at the labelled class's mean: no fall beyond seed noise.
    assert sweep[1.5] > sweep[1.0] - result.noise[name], sweep


def test_the_demo_leaves_an_adapter_file_and_a_grid(result):
    assert [d.name for d in read_header(result.adapter_path).dimensions] == ["bright", "warm"]
    with Image.open(result.grid_path) as grid:
        # 8 columns (two λ sweeps of 4) by 8 seeds, 4-pixel swatches with 1-pixel gaps, scaled up 8 times
        assert grid.size == ((8 * 5 - 1) * 8, (8 * 5 - 1) * 8)
