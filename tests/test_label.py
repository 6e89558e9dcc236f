"""python -m vmix_train.label with a tiny CLIP whose embeddings are known in closed form (tests/tiny_clip.py): the
labels and scores against the zero-shot formula, thresholds, fractions and calibration, captions, the cache, the
aesthetic head, the report, bad input, and a written dataset that the trainer accepts and trains on."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from test_train_cli import RUN as CLI_RUN
from tiny_checkpoint import TinyLdmModel, original_config, write_tokenizer
from tiny_clip import aesthetic_reference, write_red_aesthetic_head, write_tiny_clip, zero_shot_reference
from transformers import CLIPModel

from vmix_train.__main__ import main as train_main
from vmix_train.aesthetic import AestheticHead
from vmix_train.dataset import load_dataset
from vmix_train.label import main
from vmix_train.labelling_report import REPORT_JSON, REPORT_MD, SCORES_JSONL, SCORES_PNG
from vmix_train.labelling_scores import calibrate, threshold_for_fraction

# The trainer CLI test's run (a tiny SD model, dimension "color", positive "vivid colour") with a second dimension,
# "lighting" ("natural lighting"). To the tiny CLIP a text is its count of the letters r, g, b: "vivid colour" is
# pure red, "natural lighting" is 1 r and 2 g, and the default contrasting text "an image" is pure green.
RUN = CLI_RUN + '\n[[dimensions]]\nname = "lighting"\npositive = "natural lighting"\nnegative = "sks2"\n'
TEXTS = {"color": ("vivid colour", "an image"), "lighting": ("natural lighting", "an image")}
COLOURS = {  # file name in the images folder: flat colour
    "red.png": (230, 40, 30),
    "blue.png": (30, 40, 230),
    "olive.png": (150, 120, 40),
    "green.png": (40, 220, 50),
    "sub/purple.png": (200, 60, 190),
    "sub/orange.png": (240, 150, 20),
}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def add_image(images: Path, name: str, rgb: tuple[int, int, int], caption: str | None = None) -> None:
    path = images / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 14), rgb).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(f"{caption}\nan ignored second line\n", encoding="utf-8")


@pytest.fixture
def run(tmp_path, clip_folder):
    """A run config (model paths that do not exist yet), an images folder with a caption file per image, and the
    command line to label it into data/."""
    (tmp_path / "run.toml").write_text(RUN)
    images = tmp_path / "images"
    for name, rgb in COLOURS.items():
        add_image(images, name, rgb, f"a swatch called {Path(name).stem}")

    def label(*extra: str) -> int:
        where = ["--images", str(images), "--config", str(tmp_path / "run.toml"), "--clip", str(clip_folder)]
        return main([*where, "--device", "cpu", "--no-progress", *extra])

    label.root, label.images, label.data = tmp_path, images, tmp_path / "data"
    return label


def metadata(folder: Path) -> dict[str, dict]:
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    return {entry["file_name"]: entry for entry in map(json.loads, lines)}


def scores(folder: Path) -> dict[str, dict]:
    lines = (folder / ".vmix-label" / SCORES_JSONL).read_text().splitlines()
    return {row["file_name"]: row for row in map(json.loads, lines)}


def report(folder: Path) -> dict[str, dict]:
    summary = json.loads((folder / ".vmix-label" / REPORT_JSON).read_text())
    return {d["name"]: d for d in summary["dimensions"]} | {"": summary}


def expected_score(name: str, dimension: str, texts: dict = TEXTS) -> float:
    return zero_shot_reference(COLOURS[name], *texts[dimension])


def test_labels_follow_the_zero_shot_formula_and_the_dataset_trains(run, capsys):
    assert run() == 0
    out = capsys.readouterr().out
    entries = metadata(run.data)
    assert sorted(entries) == sorted(COLOURS)  # subfolders included, names relative to the dataset
    per_image = scores(run.data)
    for name in COLOURS:
        assert entries[name]["caption"] == f"a swatch called {Path(name).stem}"  # the sidecar's first line
        for dim in TEXTS:
            reference = expected_score(name, dim)
            assert abs(reference - 0.5) > 0.01  # no image sits on the default threshold
            assert per_image[name]["scores"][dim] == pytest.approx(reference, abs=1e-5)
            assert entries[name]["labels"][dim] == (reference >= 0.5), (name, dim)
    assert entries["red.png"]["labels"] == {"color": True, "lighting": True}
    assert entries["green.png"]["labels"] == {"color": False, "lighting": False}
    assert (run.data / "sub" / "purple.png").is_file()  # copied: the images folder is not the dataset folder

    # The report: counts, thresholds and files, and the same table printed.
    summary = report(run.data)
    for dim in TEXTS:
        yes = sum(entries[n]["labels"][dim] for n in entries)
        assert (summary[dim]["yes"], summary[dim]["no"]) == (yes, len(COLOURS) - yes)
        assert (summary[dim]["threshold"], summary[dim]["threshold_source"]) == (0.5, "default")
        assert summary[dim]["contrast"] == "an image"
    assert summary[""]["embedded_now"] == len(COLOURS)
    markdown = (run.data / ".vmix-label" / REPORT_MD).read_text()
    assert '| color | "vivid colour" vs "an image" |' in markdown and markdown.splitlines()[0] in out
    with Image.open(run.data / ".vmix-label" / SCORES_PNG) as png:
        assert png.size == (800, 2 * 170)  # one panel per dimension
    assert "python -m vmix_train --config" in out

    # The dataset passes the trainer's check and trains (the tiny SD model and tokenizer appear only now).
    examples = load_dataset(run.data, list(TEXTS))
    assert {e.image.name: e.labels for e in examples}["green.png"] == (0.0, 0.0)
    TinyLdmModel().save(run.root / "tiny.safetensors")
    (run.root / "tiny.yaml").write_text(yaml.safe_dump(original_config()))
    write_tokenizer(run.root / "tokenizer")
    assert train_main(["--config", str(run.root / "run.toml"), "--no-progress", "--device", "cpu"]) == 0
    assert (run.root / "out" / "out.safetensors").is_file()


def test_thresholds_fractions_and_contrasts_from_the_command_line_and_a_settings_file(run):
    settings = run.root / "labels.toml"
    settings.write_text('[dimensions.lighting]\ncontrast = "bbb"\nfraction = 0.9\n')
    assert run("--settings", str(settings), "--threshold", "color=0.9", "--fraction", "lighting=0.5") == 0
    entries, summary = metadata(run.data), report(run.data)
    assert summary["color"]["threshold"] == 0.9 and summary["color"]["threshold_source"] == "set"
    for name in COLOURS:
        assert entries[name]["labels"]["color"] == (expected_score(name, "color") >= 0.9)
    # lighting: the file's contrast, the command line's fraction (half of six images = the three best scores).
    texts = {"lighting": ("natural lighting", "bbb")}
    ranked = sorted(COLOURS, key=lambda n: expected_score(n, "lighting", texts), reverse=True)
    assert {n for n in entries if entries[n]["labels"]["lighting"]} == set(ranked[:3])
    assert summary["lighting"]["contrast"] == "bbb" and summary["lighting"]["threshold_source"] == "fraction"
    between = [expected_score(n, "lighting", texts) for n in ranked[2:4]]
    assert summary["lighting"]["threshold"] == pytest.approx(sum(between) / 2, abs=1e-6)

    assert run("--threshold", "0.2") == 0  # a bare value: every CLIP dimension
    summary = report(run.data)
    assert summary["color"]["threshold"] == summary["lighting"]["threshold"] == 0.2


def test_cuts_against_their_definitions():
    values = torch.tensor([0.1, 0.7, 0.4, 0.9])
    assert threshold_for_fraction(values, 0.5) == pytest.approx(0.55)  # between the 2nd (0.7) and 3rd (0.4) best
    assert threshold_for_fraction(values, 1.0) == pytest.approx(0.1)
    assert threshold_for_fraction(values, 0.0) > 0.9
    truth = torch.tensor([False, True, False, True])
    fitted = calibrate(values, truth, fallback=0.8)
    assert fitted.threshold == pytest.approx(0.55) and fitted.agreement == 1.0
    assert fitted.default_agreement == 0.75  # at 0.8, 0.7 is "no" against a hand "yes"
    # Two cuts agree on 3 of 4 (0.2: 0.6 is wrong; 0.75: 0.3 is wrong): the one nearer the fallback wins.
    values, truth = torch.tensor([0.1, 0.3, 0.6, 0.9]), torch.tensor([False, True, False, True])
    assert calibrate(values, truth, fallback=0.3).threshold == pytest.approx(0.2)
    assert calibrate(values, truth, fallback=0.7).threshold == pytest.approx(0.75)
    assert calibrate(values, truth, fallback=0.7).agreement == 0.75


def test_calibration_chooses_the_threshold_that_agrees_best_and_reports_it(run):
    # Hand labels for four images of the images folder: "color" yes only for red and purple (the two best
    # scores), which the default 0.5 gets wrong for orange and olive; "lighting" is stated for red only (object
    # form), so it is calibrated on that one image.
    calibration = run.images / "hand.jsonl"
    lines = [
        {"file_name": "red.png", "labels": {"color": True, "lighting": False}},
        {"file_name": "sub/purple.png", "labels": {"color": True}},
        {"file_name": "olive.png", "labels": {"color": False}},
        {"file_name": "sub/orange.png", "labels": {"color": False}},
    ]
    calibration.write_text("\n".join(json.dumps(line) for line in lines))
    assert run("--calibration", str(calibration)) == 0
    color = report(run.data)["color"]
    hand = {n: expected_score(n, "color") for n in ("red.png", "sub/orange.png", "olive.png", "sub/purple.png")}
    yes_low = min(hand["red.png"], hand["sub/purple.png"])
    no_high = max(hand["olive.png"], hand["sub/orange.png"])
    assert no_high < yes_low  # the hand labels are separable by a threshold…
    assert color["threshold_source"] == "calibrated"
    assert color["threshold"] == pytest.approx((yes_low + no_high) / 2, abs=1e-6)  # …halfway between the groups
    at_default = sum((hand[n] >= 0.5) == (n in ("red.png", "sub/purple.png")) for n in hand) / 4
    assert color["calibration"] == {
        "images": 4,
        "hand_yes": 2,
        "agreement": 1.0,
        "agreement_at_default": at_default,
        "best_threshold": color["threshold"],
    }
    assert at_default == 0.5
    entries = metadata(run.data)
    assert {n for n in entries if entries[n]["labels"]["color"]} == {
        n for n in COLOURS if expected_score(n, "color") >= color["threshold"]
    }
    assert report(run.data)["lighting"]["calibration"]["images"] == 1
    assert "100% of 4" in (run.data / ".vmix-label" / REPORT_MD).read_text()

    # With a threshold set by hand, the calibration is only measured.
    assert run("--calibration", str(calibration), "--threshold", "color=0.5") == 0
    color = report(run.data)["color"]
    assert color["threshold_source"] == "set" and color["calibration"]["agreement"] == at_default


def count_embedded(monkeypatch) -> list[int]:
    """The batch sizes the CLIP image tower is called with."""
    calls: list[int] = []
    original = CLIPModel.get_image_features

    def counting(self, pixel_values=None, **kwargs):
        calls.append(pixel_values.shape[0])
        return original(self, pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(CLIPModel, "get_image_features", counting)
    return calls


def test_a_grown_folder_embeds_only_its_new_and_changed_images(run, monkeypatch):
    calls = count_embedded(monkeypatch)
    assert run("--batch-size", "4") == 0
    assert calls == [4, 2]
    first = metadata(run.data)

    calls.clear()
    COLOURS_NEW = {"new/cyan.png": (30, 200, 210), "new/pink.png": (250, 120, 180)}
    for name, rgb in COLOURS_NEW.items():
        add_image(run.images, name, rgb, "a new swatch")
    changed = run.images / "red.png"
    Image.new("RGB", (20, 14), (40, 220, 50)).save(changed)  # now green
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert run() == 0
    assert sum(calls) == 3  # two new images and the changed one
    second = metadata(run.data)
    assert second["red.png"]["labels"]["color"] is False and first["red.png"]["labels"]["color"] is True
    assert second["new/pink.png"]["labels"]["color"] == (zero_shot_reference((250, 120, 180), *TEXTS["color"]) >= 0.5)
    summary = report(run.data)[""]
    assert (summary["embedded_now"], summary["embeddings_from_cache"]) == (3, 5)

    calls.clear()
    assert run() == 0 and calls == []  # nothing new


def test_captions_from_metadata_or_sidecars_and_kept_labels_in_place(run):
    # Label in place: the config's [data] folder is the images folder itself, which has a metadata.jsonl.
    (run.root / "run.toml").write_text(RUN.replace('folder = "data"', 'folder = "images"'))
    (run.images / "sub" / "orange.txt").unlink()
    old = [
        {"file_name": "red.png", "caption": "caption from the metadata", "labels": {"lighting": False}},
        {"file_name": "sub/orange.png", "caption": "orange from the metadata", "labels": ["color"]},
    ]
    (run.images / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in old))
    assert run("--keep-labels") == 0
    entries = metadata(run.images)
    assert entries["red.png"]["caption"] == "a swatch called red"  # the sidecar wins by default
    assert entries["sub/orange.png"]["caption"] == "orange from the metadata"  # no sidecar: the metadata's
    assert expected_score("red.png", "lighting") > 0.5 and expected_score("sub/orange.png", "lighting") > 0.5
    assert entries["red.png"]["labels"] == {"color": True, "lighting": False}  # lighting kept, color scored
    assert entries["sub/orange.png"]["labels"] == {"color": True, "lighting": False}  # list form states both
    assert report(run.images)["lighting"]["kept_from_metadata"] == 2
    assert (run.images / ".vmix-label" / "metadata.previous.jsonl").read_text().startswith('{"file_name": "red.png"')
    assert not (run.images / "sub" / "sub").exists()  # nothing copied
    assert load_dataset(run.images, list(TEXTS))

    assert run("--caption-source", "metadata") == 0  # the metadata.jsonl now holds the sidecar captions
    assert metadata(run.images)["red.png"]["caption"] == "a swatch called red"
    assert metadata(run.images)["red.png"]["labels"]["lighting"] is True  # scored again: not kept


def test_the_aesthetic_head_filters_and_labels_a_dimension(run, tmp_path):
    head = write_red_aesthetic_head(tmp_path / "head.safetensors")  # score = 10 × red component of the embedding
    aesthetic = {name: aesthetic_reference(rgb) for name, rgb in COLOURS.items()}
    minimum = 3.0
    kept = {n for n, s in aesthetic.items() if s >= minimum}
    assert 0 < len(kept) < len(COLOURS)
    args = ["--aesthetic-head", str(head), "--min-aesthetic", str(minimum), "--aesthetic-dimension", "lighting"]
    assert run(*args, "--threshold", "lighting=8") == 0
    entries = metadata(run.data)
    assert set(entries) == kept
    for name in kept:
        assert entries[name]["labels"]["lighting"] == (aesthetic[name] >= 8)
        assert scores(run.data)[name]["scores"]["lighting"] == pytest.approx(aesthetic[name], abs=1e-4)
    assert {entries[n]["labels"]["lighting"] for n in kept} == {True, False}
    dropped = {n for n, row in scores(run.data).items() if row.get("dropped")}
    assert dropped == set(COLOURS) - kept
    for name, row in scores(run.data).items():  # every image's aesthetic score, kept or not
        assert row["aesthetic"] == pytest.approx(aesthetic[name], abs=1e-4)
    summary = report(run.data)
    assert summary["lighting"]["method"] == "aesthetic" and summary[""]["aesthetic"]["dropped"] == len(dropped)
    with Image.open(run.data / ".vmix-label" / SCORES_PNG) as png:
        assert png.size == (800, 3 * 170)  # both dimensions and the filter
    assert load_dataset(run.data, list(TEXTS))


def test_bad_input_is_listed_at_once_with_status_2(run, capsys, tmp_path):
    (run.images / "broken.png").write_bytes(b"not an image at all")
    add_image(run.images, "uncaptioned.jpg", (10, 20, 30))
    wide = tmp_path / "wide-head.safetensors"
    from safetensors.torch import save_file

    save_file(AestheticHead(5).state_dict(), str(wide))
    assert run("--threshold", "colour=0.3", "--aesthetic-dimension", "quality", "--fraction", "color=2") == 2
    err = capsys.readouterr().err
    assert err.startswith("[VMix] labelling found 5 problem(s); nothing was written:")
    assert "broken.png: unreadable image" in err
    assert "uncaptioned.jpg: no caption (add uncaptioned.txt next to it" in err
    assert "--threshold colour=0.3: unknown dimension 'colour'; the config defines ['color', 'lighting']" in err
    assert "--aesthetic-dimension quality: unknown dimension 'quality'" in err
    assert "a fraction is a share of the images, from 0 to 1, got 2" in err
    assert "Traceback" not in err and not run.data.exists()

    # A head for other embeddings is caught after the model is loaded, still before anything is written.
    (run.images / "broken.png").unlink()
    assert run("--aesthetic-head", str(wide), "--min-aesthetic", "1", "--default-caption", "a swatch") == 2
    assert "expects 5-wide CLIP image embeddings (CLIP ViT-L/14), but" in capsys.readouterr().err
    assert not run.data.exists()


def test_empty_folder_missing_config_and_stray_images(run, capsys, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    code = main(["--images", str(empty), "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "run config " in err and "nope.toml: the file does not exist" in err
    assert f"no images in {empty} or its subfolders (looked for .bmp .jpeg .jpg .png .webp)" in err

    run.data.mkdir()
    Image.new("RGB", (4, 4)).save(run.data / "left-over.png")
    assert run() == 2
    assert "left-over.png: an image in the dataset folder" in capsys.readouterr().err
    assert not (run.data / "metadata.jsonl").exists()


def test_the_zero_shot_score_is_the_two_text_softmax():
    # The module's formula, checked against CLIP's softmax over two logits with the scale s.
    from vmix_train.labelling_scores import zero_shot

    image = torch.nn.functional.normalize(torch.tensor([[0.3, 0.5, 0.8]]), dim=-1)
    positive = torch.nn.functional.normalize(torch.tensor([1.0, 0.2, 0.1]), dim=0)
    contrast = torch.nn.functional.normalize(torch.tensor([0.1, 0.9, 0.3]), dim=0)
    logits = 100 * torch.stack([image @ positive, image @ contrast], dim=-1)
    assert float(zero_shot(image, positive, contrast, 100.0)) == pytest.approx(float(logits.softmax(-1)[0, 0]))
    assert math.isclose(float(zero_shot(image, positive, positive, 100.0)), 0.5)


def corrupt_png(path: Path) -> None:
    """A PNG whose chunk structure and checksums are valid (so the quick check passes) but whose pixel data is
    not a zlib stream: it fails only when decoded."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("RGB", (20, 14), (1, 2, 3)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    payload = bytes(b ^ 0x55 for b in data[at + 4 : at + 4 + length])
    data[at + 4 : at + 4 + length] = payload
    data[at + 4 + length : at + 8 + length] = struct.pack(">I", zlib.crc32(b"IDAT" + payload))
    path.write_bytes(bytes(data))


def test_images_that_fail_to_decode_are_listed_together_and_nothing_is_written(run, capsys):
    corrupt_png(run.images / "sub" / "late-a.png")
    corrupt_png(run.images / "late-b.png")
    assert run("--default-caption", "a swatch") == 2
    err = capsys.readouterr().err
    assert "labelling found 2 problem(s)" in err
    assert "late-b.png: cannot be decoded (broken data stream" in err and "sub/late-a.png: cannot be decoded" in err
    assert not run.data.exists()
    cached = list((run.images / ".vmix-label-cache").glob("clip-*/shard-*.safetensors"))
    assert len(cached) == 1  # the good images' embeddings are kept for the next run


def test_links_dry_runs_and_the_in_place_filter_refusal(run, capsys, tmp_path):
    assert run("--dry-run") == 0
    assert not (run.data / "metadata.jsonl").exists() and (run.data / ".vmix-label" / REPORT_MD).is_file()
    assert "dry run: no dataset written" in capsys.readouterr().out

    assert run("--link") == 0
    linked = run.data / "sub" / "purple.png"
    assert linked.is_symlink() and linked.resolve() == (run.images / "sub" / "purple.png").resolve()
    assert load_dataset(run.data, list(TEXTS))

    head = write_red_aesthetic_head(tmp_path / "head.safetensors")
    in_place = ["--out", str(run.images), "--aesthetic-head", str(head), "--min-aesthetic", "3"]
    assert run(*in_place) == 2
    assert "--min-aesthetic cannot drop images from a dataset labelled in place" in capsys.readouterr().err


def test_the_cache_is_kept_apart_per_model_weights_and_dtype(clip_folder, tmp_path):
    from vmix_train.clip_models import load_clip
    from vmix_train.labelling_cache import model_identity

    reference = model_identity(load_clip(clip_folder))
    copy = tmp_path / "copy"
    load_clip(clip_folder).model.save_pretrained(copy)
    load_clip(clip_folder).processor.save_pretrained(copy)
    assert model_identity(load_clip(copy)) == reference  # another place, same model: the cache is shared
    assert model_identity(load_clip(clip_folder, dtype=torch.bfloat16)) != reference
    tuned = load_clip(clip_folder)
    with torch.no_grad():
        tuned.model.visual_projection.weight.mul_(1.01)
    assert model_identity(tuned) != reference


def test_half_precision_gives_the_same_labels(run):
    """bfloat16 (as on a GPU, where float16 is the default) runs the same path; scores move by rounding only."""
    assert run("--dtype", "bfloat16") == 0
    for name, row in scores(run.data).items():
        for dim in TEXTS:
            assert row["scores"][dim] == pytest.approx(expected_score(name, dim), abs=0.03)
            assert row["labels"][dim] == (expected_score(name, dim) >= 0.5)


@pytest.mark.parametrize("device", ["foo", "cuda:7"])
def test_a_device_this_machine_lacks_is_refused_as_the_trainer_refuses_it(run, capsys, device):
    assert run("--device", device) == 2
    err = capsys.readouterr().err
    assert f"--device {device}" in err.replace("'", "") and "Traceback" not in err
    assert not run.data.exists()
