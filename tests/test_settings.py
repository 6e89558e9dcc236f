"""The settings object: one vocabulary for UI, API, infotext and X/Y/Z, with clear errors."""

from __future__ import annotations

import pytest

from vmix_ext.settings import INFOTEXT_ENABLED, INFOTEXT_KEYS, SettingsError, VMixSettings, elem_id, parse_dimensions


def test_defaults_are_off_and_neutral():
    s = VMixSettings()
    assert (s.enabled, s.adapter, s.scale, s.dimensions, s.cond_only, s.start, s.end) == (
        False,
        "",
        1.0,
        None,
        False,
        0.0,
        1.0,
    )
    assert s.to_infotext() == {}


def test_positional_args_in_field_order_and_missing_trailing_args_keep_defaults():
    s = VMixSettings.from_args([True, "film", 0.5, ["color"]])
    assert s == VMixSettings(enabled=True, adapter="film", scale=0.5, dimensions=("color",))
    assert VMixSettings.from_args(s.as_args()) == s


def test_single_dict_form():
    s = VMixSettings.from_args([{"enabled": True, "adapter": "film", "scale": 1.5, "cond_only": True}])
    padded = VMixSettings.from_args(
        [
            {"enabled": True, "adapter": "film", "scale": 1.5, "cond_only": True},
            "ui-default",
            1.0,
            ["x"],
            False,
            0.0,
            1.0,
        ]
    )  # the host pads with UI defaults
    assert padded == s
    assert s.enabled and s.adapter == "film" and s.scale == 1.5 and s.cond_only and s.dimensions is None


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"scale": 3}, "'scale' must be a number from 0.0 to 2.0"),
        ({"scale": "abc"}, "'scale' must be a number"),
        ({"scale": float("nan")}, "'scale' must be a number"),
        ({"enabled": "maybe"}, "'enabled' must be true or false"),
        ({"start": 0.8, "end": 0.2}, "'start' (0.8) must be smaller than 'end' (0.2)"),
        ({"dimensions": [1]}, "must contain names"),
        ({"dimensions": ["color:2"]}, "the strength of VMix dimension 'color' must be a number from 0.0 to 1.0"),
        ({"adapter": 5}, "'adapter' must be an adapter name"),
        ({"lambda": 1}, "unknown VMix key(s) ['lambda']; known keys: enabled, adapter, scale"),
    ],
)
def test_bad_values_name_the_parameter(values, words):
    with pytest.raises(SettingsError) as info:
        VMixSettings.from_dict(values)
    assert words in str(info.value)


def test_too_many_positional_args():
    with pytest.raises(SettingsError, match="at most 12 args"):
        VMixSettings.from_args([True] * 13)


def test_strings_from_infotext_and_xyz_are_accepted():
    s = VMixSettings(enabled="True", scale="0.75", cond_only="False", dimensions="color, lighting:0.5")
    assert s.enabled is True and s.scale == 0.75 and s.cond_only is False
    assert s.dimensions == ("color", "lighting:0.5")


def test_strengths_for_an_adapter():
    names = ["color", "lighting", "focus"]
    assert VMixSettings().strengths(names) == {"color": 1.0, "lighting": 1.0, "focus": 1.0}
    chosen = VMixSettings(dimensions=["lighting:0.25", "color"])
    assert chosen.strengths(names) == {"color": 1.0, "lighting": 0.25, "focus": 0.0}
    assert VMixSettings(dimensions=[]).strengths(names) == {"color": 0.0, "lighting": 0.0, "focus": 0.0}
    with pytest.raises(SettingsError, match=r"dimension.s. mood not in this adapter; it has: color, lighting, focus"):
        VMixSettings(dimensions=["mood"]).strengths(names)


@pytest.mark.parametrize(
    "settings",
    [
        VMixSettings(
            enabled=True,
            adapter="styles/film",
            scale=0.35,
            dimensions=("color", "focus:0.5"),
            cond_only=True,
            start=0.1,
            end=0.9,
        ),
        VMixSettings(enabled=True, adapter="film"),
        VMixSettings(enabled=True, adapter="film", dimensions=()),
    ],
)
def test_infotext_round_trip(settings):
    entries = settings.to_infotext(adapter_hash="0123456789")
    assert entries["VMix hash"] == "0123456789"
    # The host turns every value into text; pasting gives text back.
    pasted = VMixSettings.from_infotext({k: str(v) for k, v in entries.items()})
    assert pasted == settings


def test_infotext_without_vmix_switches_it_off():
    assert VMixSettings.from_infotext({"Steps": "20", "Sampler": "Euler"}) == VMixSettings()


def test_vocabulary_is_complete_and_unique():
    names = VMixSettings.field_names()
    assert set(INFOTEXT_KEYS) == set(names) - {"enabled"}
    assert len(set(INFOTEXT_KEYS.values())) == len(INFOTEXT_KEYS)
    assert INFOTEXT_ENABLED not in INFOTEXT_KEYS.values()
    ids = {elem_id(n, tab) for n in names for tab in ("txt2img", "img2img")}
    assert len(ids) == 2 * len(names)


def test_parse_dimensions_forms():
    assert parse_dimensions(None) is None
    assert parse_dimensions("") == ()
    assert parse_dimensions("a, b:1, c:0.5") == ("a", "b", "c:0.5")
    with pytest.raises(SettingsError, match="has no name"):
        parse_dimensions([":0.5"])


def test_new_controls_validate_and_write_infotext_only_when_set():
    plain = VMixSettings(enabled=True, adapter="film")
    assert not any(key in plain.to_infotext() for key in ("VMix input scale", "VMix passes", "VMix hires scale"))
    tuned = VMixSettings(
        enabled=True, adapter="film", input_scale="0.5", output_scale=2, passes="Hires", hires_scale=0.75
    )
    entries = tuned.to_infotext()
    assert entries["VMix input scale"] == "0.5" and entries["VMix output scale"] == "2"
    assert entries["VMix passes"] == "hires" and entries["VMix hires scale"] == "0.75"
    assert "VMix middle scale" not in entries
    assert VMixSettings.from_infotext({k: str(v) for k, v in entries.items()}) == tuned
    assert tuned.blocks == (0.5, 1.0, 2.0)
    assert tuned.applies_to(hires_pass=True) and not tuned.applies_to(hires_pass=False)
    assert tuned.scale_for(hires_pass=True) == 0.75 and tuned.scale_for(hires_pass=False) == 1.0
    assert VMixSettings(hires_scale=-1).hires_scale is None and VMixSettings(hires_scale="").hires_scale is None
    with pytest.raises(SettingsError, match="'passes' must be one of both, first, hires"):
        VMixSettings(passes="second")
    with pytest.raises(SettingsError, match=r"'middle_scale' must be a number from 0\.0 to 2\.0"):
        VMixSettings(middle_scale=3)
    # The API's positional list grew at the end: a list of the first seven fields means what it always meant.
    assert VMixSettings.from_args([True, "film", 0.5, None, False, 0.0, 1.0]).blocks == (1.0, 1.0, 1.0)


def test_block_multipliers_scale_each_part_of_the_unet():
    from vmix_ext.mixing import MixOptions

    options = MixOptions(scale=0.8, blocks=(0.5, 0.0, 2.0))
    assert options.layer_scale("input_blocks.1.1.transformer_blocks.0.attn2") == pytest.approx(0.4)
    assert options.layer_scale("middle_block.1.transformer_blocks.0.attn2") == 0.0
    assert options.layer_scale("output_blocks.11.1.transformer_blocks.0.attn2") == pytest.approx(1.6)
    with pytest.raises(ValueError, match="block multipliers"):
        MixOptions(blocks=(1.0, -1.0, 1.0)).validate()
