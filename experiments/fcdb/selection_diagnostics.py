r"""Why the top-1 crop misses: how a run's proposals and scores relate to the expert crops.

  python -m experiments.fcdb.selection_diagnostics --workdir=workdirs/fcdb_cpu \
      [--also=workdirs/other_run,...] [--split='train[85%:]']

Restores the run's best checkpoint, predicts the raw proposals (no voting, no flip) on the
validation slice (or `--split`, e.g. part of the training slice to see the fit there) and
prints, as JSON lines:
  * the top-1 crop's IoU / BDE, the best IoU among all N proposals, and how well the score
    orders a photo's proposals by their IoU (mean Spearman correlation);
  * the mean area and edge statistics of the expert crops, the top-1 and the best proposal
    (does the score favour large, safe crops?), and the correlation of each top-1 edge with the
    expert's;
  * alternative choices among the same proposals: the expected-IoU (minimum Bayes risk) choice
    under p ~ score ** power, and the smallest crop scoring within `delta` of the best;
  * oracles told one attribute of the expert's crop: the top-1 among the proposals whose area,
    centre or aspect ratio is within a tolerance of the expert crop's (`--told`; every
    proposal where none is): what knowing how much, where, or at which ratio to crop is worth;
  * with `--also`, the same top-1 (plain and after box voting at `--vote_iou`) and expected-IoU
    choices over the proposals of this run and every `--also` run pooled (an ensemble of heads);
  * with `--scales=256,320,384`, the top-1 (plain and after box voting at `--vote_iou`) at each
    canvas size and over every size's proposals pooled (test-time multi-scale pooling; the
    model must take any canvas, i.e. K = 0).
--workdir (and --also) may also name a shipped model, e.g. `--workdir=fcdb_lite0`.
"""

import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from procrop_jax import box_geometry
from procrop_jax import evaluate
from procrop_jax import inference
from procrop_jax import input_pipeline
from procrop_jax import metrics
from procrop_jax import tta

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (not at import: other experiments import the functions)."""
  flags.DEFINE_string("workdir", None, "The trained run (its best checkpoint), or a shipped "
                      "model's name or folder.")
  flags.DEFINE_list("also", [], "Other runs (or shipped models) whose proposals are pooled "
                    "with the first's.")
  flags.DEFINE_string("split", None, "Split to score (default: the validation benchmark's).")
  flags.DEFINE_list("powers", ["1", "4", "8", "16"], "Expected-IoU choice: score powers.")
  flags.DEFINE_list("deltas", ["0.01", "0.02", "0.05"], "Smallest-crop choice: margins.")
  flags.DEFINE_list("told", ["area:0.03", "area:0.1", "centre:0.05", "ratio:0.1"],
                    "Oracle rows ATTRIBUTE:TOLERANCE (area, centre or ratio; see told_choice).")
  flags.DEFINE_list("scales", [], "Canvas sizes whose proposals are pooled (empty: skip).")
  flags.DEFINE_float("vote_iou", 0.8, "Box voting threshold of the multi-scale and pooled "
                     "rows.")


def proposals(source: str, split: str | None, image_size: int | None = None
              ) -> dict[str, np.ndarray]:
  """Normalised proposals [I, N, 4], scores [I, N], expert crops [I, 4] and sizes [I, 2] of a
  run's best checkpoint (or a shipped model), at its canvas size or `image_size`."""
  base = inference.Predictor.from_source(source)
  config = base.config.copy_and_resolve_references()
  config.inference.flip, config.inference.vote_iou, config.inference.rescore = False, 0.0, False
  if image_size:
    config.data.image_size = int(image_size)
  predictor = inference.Predictor(base.model(), config, source=base.source, step=base.step)
  benchmark = dict(config.eval.benchmarks[config.eval.best_benchmark])
  benchmark["split"] = split or benchmark["split"]
  data_config = evaluate.benchmark_data_config(config, benchmark)
  rows = {"boxes": [], "scores": [], "gt": [], "size": []}
  for batch in input_pipeline.create_eval_iterator(data_config,
                                                   global_batch_size=config.eval.batch_size):
    out = jax.device_get(predictor.predict_device(predictor.to_device(batch), False))
    for i in np.flatnonzero(batch["valid"]):
      rows["boxes"].append(np.asarray(out["boxes"][i], np.float64))
      rows["scores"].append(np.asarray(out["scores"][i], np.float64))
      rows["gt"].append(batch["boxes"][i][np.argmax(batch["box_mask"][i])].astype(np.float64))
      rows["size"].append(batch["image_size"][i])
  return {k: np.stack(v) for k, v in rows.items()}


def score_choice(chosen: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, float]:
  """Mean IoU / BDE of one chosen crop per photo, in pixels, by the project's metric code."""
  ious, bdes = [], []
  for box, gt, (height, width) in zip(chosen, data["gt"], data["size"]):
    to_px = np.array([width, height, width, height], np.float64)
    iou, bde, _ = metrics.iou_and_bde(box * to_px, gt[None] * to_px, (height, width))
    ious.append(iou)
    bdes.append(bde)
  return {"iou": round(float(np.mean(ious)), 4), "bde": round(float(np.mean(bdes)), 4)}


def top1_choice(boxes: np.ndarray, scores: np.ndarray, vote_iou: float = 0.0) -> np.ndarray:
  """Per photo, the highest-scored proposal, after box voting (`tta.vote_boxes`) if vote_iou."""
  if vote_iou:
    boxes = np.asarray(tta.vote_boxes(jnp.asarray(boxes, jnp.float32),
                                      jnp.asarray(scores, jnp.float32), vote_iou), np.float64)
  return boxes[np.arange(len(boxes)), np.argmax(scores, 1)]


def expected_iou_choice(boxes: np.ndarray, scores: np.ndarray, power: float) -> np.ndarray:
  """Per photo, the proposal with the highest IoU expected under p ~ score ** power."""
  chosen = []
  for b, s in zip(boxes, scores):
    p = s ** power / np.sum(s ** power)
    chosen.append(b[np.argmax(box_geometry.pairwise_box_iou(b, b) @ p)])
  return np.stack(chosen)


def smallest_near_best(boxes: np.ndarray, scores: np.ndarray, delta: float) -> np.ndarray:
  """Per photo, the smallest proposal scoring within `delta` of the best."""
  areas = np.where(scores >= scores.max(1, keepdims=True) - delta,
                   box_attribute(boxes, None, "area"), np.inf)
  return boxes[np.arange(len(boxes)), np.argmin(areas, 1)]


def box_attribute(boxes: np.ndarray, size_hw: np.ndarray, name: str) -> np.ndarray:
  """Normalised boxes [..., 4] -> their area (a share of the photo), centre [..., 2] or log
  aspect ratio (of the box in pixels: log(width / height)); `size_hw` [I, 2] broadcasts (only
  the ratio reads it)."""
  width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  if name == "area":
    return width * height
  if name == "centre":
    return np.stack([boxes[..., 0] + boxes[..., 2], boxes[..., 1] + boxes[..., 3]], -1) / 2
  if name == "ratio":
    shape = (-1,) + (1,) * (boxes.ndim - 2)
    h_px, w_px = size_hw[:, 0].reshape(shape), size_hw[:, 1].reshape(shape)
    return np.log(np.maximum(width * w_px, 1e-9) / np.maximum(height * h_px, 1e-9))
  raise ValueError(f"--told attribute {name!r}: use area, centre or ratio")


def told_choice(data: dict[str, np.ndarray], name: str, tolerance: float) -> np.ndarray:
  """Per photo, the top-1 among the proposals whose `name` attribute is within `tolerance` of
  the expert crop's (each coordinate, for the centre); the plain top-1 where none is."""
  gap = np.abs(box_attribute(data["boxes"], data["size"], name)
               - box_attribute(data["gt"][:, None], data["size"], name))
  if name == "centre":
    gap = gap.max(-1)
  near = gap <= tolerance
  near |= ~near.any(1, keepdims=True)
  return top1_choice(data["boxes"], np.where(near, data["scores"], -np.inf))


def box_stats(boxes: np.ndarray, gt: np.ndarray) -> dict[str, list[float] | float]:
  return {"area": round(float(np.mean(box_attribute(boxes, None, "area"))), 3),
          "edges_mean": np.round(boxes.mean(0), 3).tolist(),
          "edges_std": np.round(boxes.std(0), 3).tolist(),
          "edges_corr_with_expert": [round(float(np.corrcoef(boxes[:, k], gt[:, k])[0, 1]), 3)
                                     for k in range(4)]}


def main(argv):
  del argv
  data = proposals(FLAGS.workdir, FLAGS.split)
  n = len(data["gt"])
  top1 = top1_choice(data["boxes"], data["scores"])
  overlap = np.stack([box_geometry.pairwise_box_iou(b, g[None])[:, 0]
                      for b, g in zip(data["boxes"], data["gt"])])
  best = data["boxes"][np.arange(n), np.argmax(overlap, 1)]
  emit = lambda **row: print(json.dumps({"workdir": FLAGS.workdir, "photos": n, **row}),
                             flush=True)
  within_photo = np.nanmean([metrics.spearman(s, o) for s, o in zip(data["scores"], overlap)])
  emit(choice="top1", **score_choice(top1, data),
       best_of_all_iou=round(float(overlap.max(1).mean()), 4),
       score_iou_spearman_within_photo=round(float(within_photo), 3))
  for name, boxes in (("expert", data["gt"]), ("top1", top1), ("best_proposal", best)):
    emit(boxes=name, **box_stats(boxes, data["gt"]))
  for power in map(float, FLAGS.powers):
    emit(choice=f"expected_iou_power{power:g}",
         **score_choice(expected_iou_choice(data["boxes"], data["scores"], power), data))
  for delta in map(float, FLAGS.deltas):
    emit(choice=f"smallest_within_{delta:g}",
         **score_choice(smallest_near_best(data["boxes"], data["scores"], delta), data))
  for told in FLAGS.told:
    name, tolerance = told.split(":")
    emit(choice=f"told_{name}_within_{float(tolerance):g}",
         **score_choice(told_choice(data, name, float(tolerance)), data))
  if FLAGS.scales:
    scales = [int(size) for size in FLAGS.scales]
    at = {size: proposals(FLAGS.workdir, FLAGS.split, size) for size in scales}
    pooled = {"boxes": np.concatenate([at[size]["boxes"] for size in scales], 1),
              "scores": np.concatenate([at[size]["scores"] for size in scales], 1)}
    for name, props in [*((f"canvas_{size}", at[size]) for size in scales),
                        ("canvas_" + "+".join(map(str, scales)), pooled)]:
      emit(choice=f"top1_{name}", **score_choice(top1_choice(props["boxes"], props["scores"]),
                                                 data))
      emit(choice=f"top1_{name}_vote{FLAGS.vote_iou:g}", **score_choice(
          top1_choice(props["boxes"], props["scores"], FLAGS.vote_iou), data))
  if FLAGS.also:
    others = [proposals(source, FLAGS.split) for source in FLAGS.also]
    boxes = np.concatenate([data["boxes"], *(other["boxes"] for other in others)], 1)
    scores = np.concatenate([data["scores"], *(other["scores"] for other in others)], 1)
    emit(choice="pooled_top1", also=FLAGS.also,
         **score_choice(top1_choice(boxes, scores), data))
    emit(choice=f"pooled_top1_vote{FLAGS.vote_iou:g}", also=FLAGS.also,
         **score_choice(top1_choice(boxes, scores, FLAGS.vote_iou), data))
    for power in map(float, FLAGS.powers):
      emit(choice=f"pooled_expected_iou_power{power:g}", also=FLAGS.also,
           **score_choice(expected_iou_choice(boxes, scores, power), data))


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("workdir")
  app.run(main)
