"""The metrics against their definitions: CLIP score = 100·max(cos, 0), the LAION head's forward, FID's Fréchet
distance (≈ 0 for a set with itself, positive between sets, equal to the formula), FID's Inception network and its
weight files."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_metric_models import (
    CLIP_WIDTH,
    ColourFeatures,
    write_random_inception,
    write_tiny_aesthetic_head,
    write_tiny_clip,
)

from vmix_train.aesthetic import AestheticHeadError, load_aesthetic_head
from vmix_train.clip_models import ClipModelError, load_clip
from vmix_train.inception import (
    FEATURES,
    FidInception,
    InceptionWeightsError,
    convert,
    load_inception,
    resize_like_tensorflow1,
)
from vmix_train.metrics import (
    FrechetDistance,
    MetricError,
    aesthetic_scores,
    check_aesthetic_pair,
    clip_scores,
    summarise,
    uint8_batch,
)


def images(count: int, seed: int, low: int = 0, high: int = 256, size: tuple[int, int] = (24, 20)) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(low, high, (count, size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(p.numpy()) for p in pixels]


def fixed_scorer(image_rows: list[list[float]], text_rows: list[list[float]]) -> SimpleNamespace:
    """A scorer that returns the given unit vectors, for checking the formula by hand."""
    return SimpleNamespace(
        image_embeds=lambda _images: F.normalize(torch.tensor(image_rows, dtype=torch.float32), dim=-1),
        text_embeds=lambda _texts: F.normalize(torch.tensor(text_rows, dtype=torch.float32), dim=-1),
        source="fixed",
    )


def test_clip_score_is_100_times_the_cosine_clipped_at_zero():
    scorer = fixed_scorer([[1, 0], [1, 0], [3, 4], [0, 1]], [[0.6, 0.8], [-1, 0], [3, 4], [1, 0]])
    scores = clip_scores(scorer, [None] * 4, ["a", "b", "c", "d"])  # type: ignore[list-item]
    torch.testing.assert_close(scores, torch.tensor([60.0, 0.0, 100.0, 0.0]))
    with pytest.raises(ValueError, match="one prompt per image"):
        clip_scores(scorer, [None] * 4, ["a"])  # type: ignore[list-item]


def test_clip_score_with_a_local_clip_model(tmp_path):
    folder = write_tiny_clip(tmp_path / "clip")
    scorer = load_clip(folder)
    pictures = images(3, seed=1)
    prompts = ["a red fox", "a dog", "rain"]
    with torch.no_grad():
        pixels = scorer.processor(images=pictures, return_tensors="pt")["pixel_values"]
        tokens = scorer.processor(text=prompts, return_tensors="pt", padding=True)
        image = scorer.model.get_image_features(pixel_values=pixels)
        text = scorer.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    image, text = (getattr(t, "pooler_output", t) for t in (image, text))
    cosine = (image * text).sum(-1) / (image.norm(dim=-1) * text.norm(dim=-1))
    expected = 100 * cosine.clamp(min=0)
    torch.testing.assert_close(clip_scores(scorer, pictures, prompts), expected, atol=1e-4, rtol=1e-4)
    assert scorer.image_embeds(pictures).shape == (3, CLIP_WIDTH)
    with pytest.raises(ClipModelError, match=r"no config\.json"):
        load_clip(tmp_path)


def test_the_aesthetic_head_is_five_affine_maps(tmp_path):
    path = write_tiny_aesthetic_head(tmp_path / "head.safetensors", embed_dim=8)
    head = load_aesthetic_head(path)
    x = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    weights = {k: v for k, v in head.state_dict().items()}
    expected = x
    for index in (0, 2, 4, 6, 7):  # Linear layers; the Dropouts between them are off in eval mode
        expected = expected @ weights[f"layers.{index}.weight"].T + weights[f"layers.{index}.bias"]
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected.squeeze(-1), atol=1e-5, rtol=1e-5)
        assert torch.equal(head(x), head(x))  # no dropout at evaluation
    scorer = fixed_scorer(x.tolist(), x.tolist())
    torch.testing.assert_close(aesthetic_scores(scorer, head, [None] * 4), expected.squeeze(-1), atol=1e-5, rtol=1e-5)
    narrow = fixed_scorer([[1.0] * 4], [[1.0] * 4])
    with pytest.raises(MetricError, match=r"takes 8-wide CLIP embeddings.*gives 4-wide.*ViT-L/14"):
        aesthetic_scores(narrow, head, [None])
    with pytest.raises(MetricError, match=r"takes 8-wide CLIP embeddings.*'fixed' gives 16-wide"):
        check_aesthetic_pair(
            SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(projection_dim=16)), source="fixed"), head
        )
    broken = tmp_path / "broken.safetensors"
    save_file({"layers.0.weight": torch.zeros(3, 8)}, str(broken))
    with pytest.raises(AestheticHeadError, match=r"broken\.safetensors does not have the LAION head's layout"):
        load_aesthetic_head(broken)


def frechet_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½), with symmetric square roots from eigh."""

    def sqrt_psd(m: torch.Tensor) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(m)
        return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T

    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = sqrt_psd(cov_a)
    cross = sqrt_psd(root_a @ cov_b @ root_a)
    return float((a.mean(0) - b.mean(0)).square().sum() + torch.trace(cov_a + cov_b - 2 * cross))


def test_fid_is_zero_for_a_set_with_itself_and_matches_the_formula_between_sets():
    reference = images(40, seed=2)
    darker = images(30, seed=3, high=160)
    fid = FrechetDistance(ColourFeatures(), batch_size=7)
    fid.add_reference(reference)
    assert abs(fid.distance(reference)) < 1e-6
    between = fid.distance(darker)
    assert between > 0.01
    features = ColourFeatures()
    expected = frechet_by_hand(features(uint8_batch(reference)), features(uint8_batch(darker)))
    assert between == pytest.approx(expected, rel=1e-4)
    assert fid.distance(reference) == pytest.approx(0, abs=1e-6)  # the reference survives each generated set
    assert math.isnan(fid.distance(darker[:1]))  # one image has no covariance


def test_fid_takes_reference_images_of_mixed_sizes():
    fid = FrechetDistance(ColourFeatures())
    fid.add_reference([*images(5, seed=4, size=(16, 16)), *images(5, seed=5, size=(20, 12))])
    assert fid.reference_count == 10
    assert fid.distance(images(6, seed=6)) > 0


def test_tensorflow1_resize_samples_without_a_half_pixel_shift():
    row = torch.tensor([[[[0.0, 10.0]]]])  # one pixel row: 0, 10
    # Output pixel i samples the input at i·(2/4) = 0, 0.5, 1, 1.5 (clamped to the last pixel).
    torch.testing.assert_close(
        resize_like_tensorflow1(row.expand(1, 1, 2, 2), 4)[0, 0, 0], torch.tensor([0, 5, 10, 10.0])
    )


def test_inception_weights_load_from_a_converted_file_and_bad_files_are_named(tmp_path):
    path = write_random_inception(tmp_path / "inception.safetensors")
    model = load_inception(path)
    reference = FidInception()
    reference.load_state_dict({k: v for k, v in load_file(str(path)).items() if not k.startswith("fc.")})
    batch = uint8_batch(images(2, seed=7, size=(40, 30)))
    with torch.no_grad():
        features = model(batch)
        assert features.shape == (2, FEATURES)
        assert torch.equal(features, reference.eval()(batch))
    state = {k: v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "published.pth")
    convert(tmp_path / "published.pth", tmp_path / "converted.safetensors")
    with torch.no_grad():
        assert torch.equal(load_inception(tmp_path / "converted.safetensors")(batch), features)
    head = write_tiny_aesthetic_head(tmp_path / "head.safetensors")
    with pytest.raises(InceptionWeightsError, match=r"head\.safetensors are not FID's Inception-v3"):
        load_inception(head)
    with pytest.raises(InceptionWeightsError, match="not found"):
        load_inception(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="uint8 RGB images"):
        model(batch.float())


def test_summary_is_the_mean_and_its_standard_error():
    summary = summarise([1.0, 2.0, 3.0, 4.0])
    assert summary.mean == 2.5 and summary.count == 4
    assert summary.se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(summarise([7.0]).se) and summarise([7.0]).mean == 7.0


def test_the_aesthetic_head_converts_once_and_a_wrong_file_is_not_left_behind(tmp_path):
    from vmix_train import aesthetic

    head = aesthetic.AestheticHead(16)
    torch.save(head.state_dict(), tmp_path / "published.pth")  # the published head is such a pickle
    assert aesthetic.main(["convert", str(tmp_path / "published.pth"), str(tmp_path / "head.safetensors")]) == 0
    embeds = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    with torch.no_grad():
        assert torch.equal(aesthetic.load_aesthetic_head(tmp_path / "head.safetensors")(embeds), head.eval()(embeds))
    torch.save({"something.else": torch.zeros(2)}, tmp_path / "other.pth")
    assert aesthetic.main(["convert", str(tmp_path / "other.pth"), str(tmp_path / "bad.safetensors")]) == 2
    assert not (tmp_path / "bad.safetensors").exists() and not (tmp_path / "bad.safetensors.tmp").exists()
