"""CAD refinement: the rules (hand-written proposals), and rounds on a tiny generated set."""

import pathlib
import shutil

import numpy as np
from PIL import Image
import pytest

from procrop_jax import box_geometry
from procrop_jax import feature_cache
from procrop_jax import photos as photos_lib
from procrop_jax import refine_cad
from procrop_jax.cad import generate
from procrop_jax.cad import refine
from procrop_jax.cad import refine_files
from procrop_jax.datasets import annotation_files
from procrop_jax.datasets import prepare

# A 1000 x 800 canvas whose photo (the pseudo-label) is 600 x 400 (3:2), x1y1x2y2 pixels.
CANVAS = (1000, 800)
LABEL = (100, 100, 700, 500)


def shifted(dx):
  return (100 + dx, 100, 700 + dx, 500)


def iou(a, b):
  return float(box_geometry.pairwise_box_iou(a, b)[0, 0])


# ------------------------------------------------------------------------------------- rules


def test_aspect_ratios_snap_within_the_tolerance_and_inverses_count():
  ratios, tol = refine.COMMON_RATIOS, 0.03
  assert refine.snapped_ratio((0, 0, 152, 100), ratios, tol) == 1.5  # 1.3% off 3:2.
  assert refine.snapped_ratio((0, 0, 100, 152), ratios, tol) == pytest.approx(2 / 3)
  assert refine.snapped_ratio((0, 0, 140, 100), ratios, tol) == 1.4  # 7:5.
  assert refine.snapped_ratio((0, 0, 178, 100), ratios, tol) == pytest.approx(16 / 9)
  assert refine.snapped_ratio((0, 0, 145, 100), ratios, tol) is None  # 3.3% off 3:2, 3.6% off 7:5.
  assert refine.snapped_ratio((0, 0, 200, 100), ratios, tol) is None  # 2:1 is not common.


def test_each_rule_drops_what_it_should():
  proposals = np.array([
      (100, 100, 640, 500),  # .90 1.35 -> 4:3 (104..637), IoU .89 with the label: kept.
      (102, 100, 642, 500),  # .85 the same after snapping: a near-duplicate of the first.
      (130, 100, 700, 500),  # .80 1.425 -> 7:5, IoU .93 with the label: a copy of it.
      (100, 100, 700, 560),  # .75 1.30 -> 4:3 (94..707 x 100..560), IoU .85: kept.
      (100, 100, 680, 500),  # .70 1.45: no common ratio within 3%.
      (200, 150, 500, 350),  # .65 3:2 inside the photo, but IoU .25 (a corner of it).
      (0, 0, 900, 600),      # .60 3:2 containing the photo, but IoU .44 (mostly out-painting).
      (60, 100, 700, 560),   # .40 1.39 -> 7:5, IoU .81, but the score is not above 0.4.
  ], np.float64)
  scores = np.array([.9, .85, .8, .75, .7, .65, .6, .4])
  boxes, kept_scores = refine.select(proposals, scores, LABEL, CANVAS)
  np.testing.assert_array_equal(boxes, [(104, 100, 637, 500), (94, 100, 707, 560)])
  np.testing.assert_array_equal(kept_scores, [.9, .75])
  for box, ratio in zip(boxes, (4 / 3, 4 / 3)):
    w, h = box[2] - box[0], box[3] - box[1]
    assert abs(w - h * ratio) <= 0.5  # Snapped to the ratio to within half a pixel.
    assert iou(box, LABEL) > 0.8
  # The last proposal is dropped by the threshold alone.
  boxes, _ = refine.select(proposals[-1:], [0.41], LABEL, CANVAS)
  assert len(boxes) == 1


def test_overlap_is_iou_with_the_pseudo_label():
  # The same 3:2 box, placed at IoU just above and just below 0.8 with the label.
  above, below = shifted(66), shifted(67)  # IoU 534/666 = .802 and 533/667 = .799.
  assert iou(above, LABEL) > 0.8 > iou(below, LABEL)
  rules = refine.Rules(duplicate_iou=1.0)
  assert len(refine.select([above], [0.9], LABEL, CANVAS, rules)[0]) == 1
  assert len(refine.select([below], [0.9], LABEL, CANVAS, rules)[0]) == 0


def test_keeps_the_best_few_by_score():
  proposals = [shifted(5 * k) for k in range(1, 7)]  # IoU >= .905 with the label; .98 pairwise.
  scores = [.5, .9, .6, .8, .7, .95]
  rules = refine.Rules(duplicate_iou=0.99)
  boxes, kept_scores = refine.select(proposals, scores, LABEL, CANVAS, rules)
  np.testing.assert_array_equal(kept_scores, [.95, .9, .8, .7])
  np.testing.assert_array_equal(boxes, [shifted(30), shifted(10), shifted(20), shifted(25)])
  assert len(refine.select(proposals, scores, LABEL, CANVAS,
                           refine.Rules(duplicate_iou=0.99, max_boxes=2))[0]) == 2


def test_near_duplicates_of_kept_boxes_are_dropped():
  proposals = [shifted(-50), shifted(-48), shifted(50)]
  boxes, _ = refine.select(proposals, [.9, .8, .7], LABEL, CANVAS)
  np.testing.assert_array_equal(boxes, [shifted(-50), shifted(50)])


def test_rules_from_a_config_without_a_refine_section_are_the_defaults():
  assert refine.Rules.from_config(None) == refine.Rules()
  assert refine.Rules.from_config({"max_boxes": 2, "ratios": [1, 2]}) == refine.Rules(
      max_boxes=2, ratios=(1.0, 2.0))


def test_diversity():
  assert refine.diversity(np.array([LABEL])) == 0.0
  assert refine.diversity(np.array([LABEL, LABEL])) == 0.0
  assert refine.diversity(np.array([(0, 0, 10, 10), (20, 20, 30, 30)])) == 1.0


# ------------------------------------------------------------------------------------ rounds


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> pathlib.Path:
  """Four canvases (2 photos x 2 variants) of a tiny CAD set."""
  root = tmp_path_factory.mktemp("cad_refine") / "manual"
  photos = [p for p in photos_lib.skimage_photo_paths()
            if p.name in ("chelsea.png", "coffee.png")]
  generate.generate_cad(photos, root, variants_per_photo=2, max_side=160, workers=1,
                        progress=False)
  return root


@pytest.fixture(name="config")
def fixture_config(generated, tmp_path):
  from configs import testing  # pylint: disable=g-import-not-at-top
  config = testing.get_config()
  shutil.copytree(generated, tmp_path / "manual")
  config.data.manual_dir = str(tmp_path / "manual")
  config.data.data_dir = str(tmp_path / "tfds")
  config.cad.source = ""  # The set is generated already.
  config.refine.split = "train"
  config.eval.batch_size = 2  # Two batches: a round can stop between them.
  return config


def annotations(config) -> dict[str, str]:
  root = pathlib.Path(config.data.manual_dir) / "annotations"
  return {p.stem: p.read_text() for p in sorted(root.glob("*.txt"))}


def proposals_for(label_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Proposals around a pseudo-label: two that pass the rules, one near-duplicate, junk."""
  x1, y1, x2, y2 = label_px
  w, h = x2 - x1, y2 - y1
  boxes = np.array([
      (x1, y1, x1 + 0.84 * w, y2),  # Narrower: about 5:4, IoU about .83.
      (x1 + 0.16 * w, y1, x2, y2),  # The same on the other side.
      (x1 + 0.01 * w, y1, x1 + 0.85 * w, y2),  # Almost the first.
      (0, 0, 1, 1),  # A corner of the canvas.
  ])
  return boxes, np.array([.9, .8, .85, .99])


class FakeModel:
  """Proposes `proposals_for` each canvas's pseudo-label; can fail after some batches."""

  def __init__(self, config, fail_after: int | None = None):
    self.root = pathlib.Path(config.data.manual_dir)
    self.fail_after = fail_after
    self.seen: list[str] = []

  def __call__(self, batch):
    if self.fail_after is not None and len(self.seen) >= self.fail_after:
      raise KeyboardInterrupt
    boxes, scores = [], []
    for image_id, (height, width), valid in zip(batch["image_id"], batch["image_size"],
                                                batch["valid"]):
      stem = image_id.decode()
      if valid:
        self.seen.append(stem)
      label = refine_files.pseudo_label(refine_files.base_path(self.root, stem))
      b, s = proposals_for(label)
      boxes.append(b / [width, height, width, height])
      scores.append(s)
    return np.stack(boxes), np.stack(scores)


def expected_annotations(config, before: dict[str, str]) -> dict[str, str]:
  """What the rules say each canvas's annotation becomes (base line + selected proposals)."""
  rules = refine.Rules.from_config(config.refine)
  out = {}
  for stem, text in before.items():
    base = text.splitlines(keepends=True)[0]
    path = pathlib.Path(config.data.manual_dir) / "annotations" / f"{stem}.txt"
    label = annotation_files.parse_yxyx_lines(path)[0][0]
    image = Image.open(
        pathlib.Path(config.data.manual_dir) / "images" / f"{stem}.jpg")
    boxes, scores = refine.select(*proposals_for(label), label, image.size, rules)
    out[stem] = base + refine_files.extra_lines(boxes, scores)
  return out


def test_a_round_writes_what_the_rules_select(config):
  before = annotations(config)
  expected = expected_annotations(config, before)
  summary = refine_cad.run_round(config, FakeModel(config), "model-a")
  after = annotations(config)
  assert after == expected
  assert all(len(text.splitlines()) == 3 for text in after.values())  # Label + 2 of 4.
  assert all(after[s].splitlines()[0] == before[s].splitlines()[0] for s in before)
  assert summary["canvases"] == 4 and summary["changed"] == 4
  assert summary["boxes_per_canvas_before"] == 1 and summary["boxes_per_canvas_after"] == 3
  assert summary["extra_mean_score"] == pytest.approx(0.85)
  assert summary["diversity_before"] == 0 and summary["diversity_after"] > 0
  assert refine_files.read_rounds(config.data.manual_dir)[-1]["round"] == 1


def test_a_second_round_with_the_same_proposals_changes_nothing(config):
  refine_cad.run_round(config, FakeModel(config), "model-a")
  first = annotations(config)
  model = FakeModel(config)
  summary = refine_cad.run_round(config, model, "model-b")
  assert summary["round"] == 2 and summary["changed"] == 0 and len(model.seen) == 4
  assert annotations(config) == first
  # The same model again: the round is finished, nothing is proposed.
  model = FakeModel(config)
  assert refine_cad.run_round(config, model, "model-b")["round"] == 2
  assert not model.seen


def test_an_interrupted_round_resumes_without_redoing_canvases(config):
  expected = expected_annotations(config, annotations(config))
  model = FakeModel(config, fail_after=2)
  with pytest.raises(KeyboardInterrupt):
    refine_cad.run_round(config, model, "model-a")
  state = refine_files.read_state(config.data.manual_dir)
  assert state["position"] == 2 and not state["complete"]
  done = model.seen
  model = FakeModel(config)
  summary = refine_cad.run_round(config, model, "model-a")
  assert not set(model.seen) & set(done) and len(model.seen) == 2
  assert summary["canvases"] == 4 and summary["changed"] == 4
  assert annotations(config) == expected


def test_the_builder_reads_refined_annotations(config, capsys):
  builder = prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  assert builder.info.metadata["annotations_fingerprint"] == ""
  refine_cad.run_round(config, FakeModel(config), "model-a")
  builder = prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  assert "Rebuilding" in capsys.readouterr().out
  fingerprint = refine_files.annotations_fingerprint(config.data.manual_dir)
  assert builder.info.metadata["annotations_fingerprint"] == fingerprint != ""
  assert feature_cache.cache_key(config, builder, "train")["annotations_fingerprint"] == (
      fingerprint)
  texts = annotations(config)
  for example in builder.as_data_source("train"):
    stem = example["image_id"]
    stem = stem.decode() if isinstance(stem, bytes) else stem
    path = pathlib.Path(config.data.manual_dir) / "annotations" / f"{stem}.txt"
    boxes, scores = annotation_files.parse_yxyx_lines(path)
    assert len(texts[stem].splitlines()) == len(example["boxes_px"]) == 3
    np.testing.assert_allclose(example["boxes_px"], boxes)
    np.testing.assert_allclose(example["box_scores"], scores, rtol=1e-6)
  prepare.ensure_dataset(config.data, config.cad, seed=config.seed)  # Up to date: not built again.
  assert "Rebuilding" not in capsys.readouterr().out


@pytest.mark.slow
def test_refine_cad_mode_with_a_trained_run(config, tiny_trained_workdir):
  with config.unlocked():
    # The 1-step model's scores are near zero and its boxes anywhere: let everything through.
    config.refine.min_score = -1.0
    config.refine.min_label_iou = -1.0
    config.refine.aspect_tolerance = 10.0
  before = annotations(config)
  summary = refine_cad.refine_cad(config, str(tiny_trained_workdir))
  after = annotations(config)
  assert summary["canvases"] == 4 and summary["model"].endswith("@1")
  assert all(after[s].splitlines()[0] == before[s].splitlines()[0] for s in before)
  assert summary["boxes_per_canvas_after"] > 1
  builder = prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  assert sum(len(e["boxes_px"]) for e in builder.as_data_source("train")) == pytest.approx(
      summary["boxes_per_canvas_after"] * 4)
