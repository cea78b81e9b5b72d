"""Benchmark evaluation: model predictions -> the cropping protocols of `metrics.py`.

A benchmark is an entry of `config.eval.benchmarks` (a ConfigDict keyed by name):

  dataset         TFDS builder name (fcdb, flms, gaicd, procrop_cad, ...)*
  builder_config  its config name, or "" for none*
  split           e.g. "test" or "train[85%:]"
  manual_dir      where its raw files are (see data/README.md)*
  protocols       comma-separated: "iou" (FCDB/FLMS: top-1 IoU and BDE, top-k recall),
                  "proposal" (GAICD/CPC: Acc5/Acc10 and mAP of the proposed crops),
                  "ranking" (GAIC: the model scores the annotated candidate crops),
                  "pairs" (FCDB's rated crop pairs: pairwise accuracy of the given-box
                  scores, keys pair_acc*), "aspect" (the crop asked for with the ground
                  truth's aspect ratio, chosen as the Cropper chooses it (aspect.choose,
                  aspect.FAST), scored like "iou": keys aspect_iou, aspect_bde, ...)
  max_boxes       ground-truth boxes kept per image (GAICD has about 90 candidates)
  optional        (default False) skip with a message when the data or split is absent, e.g. a
                  test split that is held out

Fields marked * (and max_boxes) default to those of `config.data`.

`main --mode=eval` also writes `report.html` beside the results (`write_report`): the metric
tables and the first photos of the best benchmark with their crops, collected during the same
pass.

Predictions are made in fixed order over the mesh (the batch split over the data axis) and are
deterministic. Boxes go from the model's normalised coordinates to pixels of the stored image with
its own width (x) and height (y); the metrics then follow their documented formulas.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from procrop_jax import artifacts
from procrop_jax import aspect
from procrop_jax import html_pages
from procrop_jax import input_pipeline
from procrop_jax import metrics
from procrop_jax import photos
from procrop_jax.datasets import prepare as prepare_lib
from procrop_jax.datasets import schema

PROTOCOLS = ("iou", "proposal", "ranking", "pairs", "aspect")
REPORT_FILE = "report.html"

# (device batch, score given boxes?) -> {"boxes": [B, N, 4] normalised, "scores": [B, N]}.
PredictFn = Callable[[dict[str, jax.Array], bool], dict[str, jax.Array]]


def parse_protocols(text: str) -> tuple[str, ...]:
  protocols = tuple(p.strip() for p in text.split(",") if p.strip())
  unknown = [p for p in protocols if p not in PROTOCOLS]
  if unknown or not protocols:
    raise ValueError(f"protocols={text!r}: choose from {', '.join(PROTOCOLS)} "
                     "(comma-separated).")
  return protocols


def benchmark_data_config(config: ml_collections.ConfigDict,
                          benchmark: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """`config.data` with the benchmark's dataset, split and box budget, no augmentation."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.dataset = benchmark.get("dataset", data.dataset)
  data.builder_config = benchmark.get("builder_config", data.builder_config) or None
  data.manual_dir = benchmark.get("manual_dir", data.manual_dir)
  data.eval_split = benchmark["split"]
  data.max_boxes = benchmark.get("max_boxes", data.max_boxes)
  data.augment = False
  return data


def result_filename(dataset: str, split: str, builder_config: str | None = None) -> str:
  """`<dataset>[_<builder_config>]_<split>.json`, made filesystem-safe (train[85%:] -> train_85pct_).

  The builder config is part of the name so that two configs of one dataset (their own photos
  and labels) never overwrite each other's results.
  """
  safe = lambda text: re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("%", "pct"))
  parts = [dataset, builder_config, split] if builder_config else [dataset, split]
  return "_".join(safe(part) for part in parts) + ".json"


def write_result(output_dir: str, result: Mapping[str, Any]) -> str:
  """Writes one benchmark's result record; returns the path of the latest file.

  `<name>.json` (from `result_filename`) holds the latest evaluation and is replaced atomically,
  so a reader never sees half of it. `<name>.jsonl` keeps the history: one line per evaluation,
  with its step and the time it was written (an evaluation run again, e.g. after a resumed
  training run, adds a line; `read_history` keeps every line in order).
  """
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, result_filename(result["dataset"], result["split"],
                                                  result.get("builder_config")))
  history = os.path.splitext(path)[0] + ".jsonl"
  line = json.dumps({**result, "time": time.time()}, sort_keys=True) + "\n"
  with open(history, "a+b") as f:  # Appends go to the end whatever the read position.
    if f.seek(0, os.SEEK_END):
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":  # The last line was cut short (a kill): start a clean one.
        line = "\n" + line
    f.write(line.encode("utf-8"))
  artifacts.atomic_write_json(path, dict(result), indent=2, sort_keys=True)
  return path


def per_image_path(result_path: str) -> str:
  """Where the per-photo values of the result at `result_path` (`write_result`) are written."""
  return os.path.splitext(result_path)[0] + ".per_image.json"


def read_history(path: str) -> list[dict[str, Any]]:
  """The records of a `<name>.jsonl` history, oldest first (a line cut short is skipped)."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def _text(image_id: Any) -> str:
  return image_id.decode() if isinstance(image_id, bytes) else str(image_id)


def _host_view(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The numeric host arrays of every process's batch (identity on a single process)."""
  keys = ("image_size", "boxes", "box_scores", "box_mask", "valid", "pair_boxes",
          "pair_weights")
  local = {k: np.asarray(batch[k]) for k in keys if k in batch}
  ids = [_text(x) for x in batch["image_id"]]
  if jax.process_count() == 1:
    return {**local, "image_id": ids}
  gathered = multihost_utils.process_allgather(local, tiled=True)
  # Ids are strings: tag them by process so they stay unique without a string all-gather.
  all_ids = [f"p{p}/{i}" for p in range(jax.process_count()) for i in range(len(ids))]
  return {**jax.tree.map(np.asarray, gathered), "image_id": all_ids}


def _device_to_host(outputs: dict[str, jax.Array]) -> dict[str, np.ndarray]:
  if jax.process_count() == 1:
    return jax.device_get(outputs)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(outputs, tiled=True))


def _local_rows(global_rows: np.ndarray) -> np.ndarray:
  """This process's rows of a host-gathered (tiled) array."""
  n = len(global_rows) // jax.process_count()
  return global_rows[jax.process_index() * n:(jax.process_index() + 1) * n]


def _score_boxes(predict: PredictFn, batch: dict[str, np.ndarray], to_device,
                 boxes: np.ndarray) -> np.ndarray:
  """Given-box scores [B_global, Q] of `boxes` [B_global, Q, 4] (normalised) on `batch`'s images."""
  local = {**batch, "boxes": _local_rows(np.asarray(boxes, np.float32))}
  return _device_to_host(predict(to_device(local), True))["scores"]


def _aspect_crops(predict: PredictFn, batch: dict[str, np.ndarray], to_device,
                  host: dict[str, np.ndarray], proposals: dict[str, np.ndarray]
                  ) -> list[tuple[np.ndarray, np.ndarray] | None]:
  """Per image, the candidates of the ground truth's ratio, best first (None: padding)."""
  sizes, ratios, props = [], [], []
  for i in range(len(host["valid"])):
    height, width = (max(int(v), 1) for v in host["image_size"][i])
    to_px = np.array([width, height, width, height], np.float64)
    ratio = 1.0
    if host["valid"][i] and host["box_mask"][i].any():
      x1, y1, x2, y2 = host["boxes"][i][np.argmax(host["box_mask"][i])] * to_px
      ratio = max(x2 - x1, 1.0) / max(y2 - y1, 1.0)
    sizes.append((width, height))
    ratios.append([ratio])
    props.append(proposals["boxes"][i].astype(np.float64) * to_px)
  chosen = aspect.choose(lambda given: _score_boxes(predict, batch, to_device, given), props,
                         sizes, ratios, candidates=aspect.FAST,
                         proposal_scores=list(proposals["scores"]))
  return [c[0] if host["valid"][i] else None for i, c in enumerate(chosen)]


@dataclasses.dataclass(frozen=True)
class Example:
  """One evaluated photo as the report shows it: boxes in pixels of the stored image."""
  image_id: str
  pixels: np.ndarray  # uint8 [h, w, 3]: the photo as the model saw it.
  size: tuple[int, int]  # (width, height) of the stored image: the boxes' frame.
  truth: np.ndarray  # [4] the ground-truth box that gave the IoU.
  prediction: np.ndarray  # [4] the top-1 predicted crop.
  score: float
  iou: float


def evaluate_benchmark(predict: PredictFn, batches: Iterator[dict[str, np.ndarray]],
                       to_device: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]],
                       protocols: tuple[str, ...], *, examples: list[Example] | None = None,
                       max_examples: int = 0,
                       per_image: dict[str, dict[str, dict[str, float]]] | None = None
                       ) -> dict[str, float]:
  """Runs `predict` over `batches` and returns the protocols' metrics, merged into one dict.

  With `examples`, the first `max_examples` photos of this process that have a ground truth
  are appended to it with their top-1 crop (when a protocol proposes crops): the report's
  pictures come from the pass that computes the metrics.

  With `per_image`, each protocol's values per photo are stored in it (protocol -> image_id ->
  values), for paired comparisons of two models on the same photos.
  """
  accumulators = {
      "iou": metrics.IoUProtocol(),
      "proposal": metrics.ProposalProtocol(),
      "ranking": metrics.RankingProtocol(),
      "pairs": metrics.PairwiseProtocol(),
      "aspect": metrics.IoUProtocol(),
  }
  accumulators = {p: accumulators[p] for p in protocols}
  for batch in batches:
    device_batch = to_device(batch)
    host = _host_view(batch)
    # This process's rows of the gathered arrays (they are tiled in process order).
    first_local = jax.process_index() * len(batch["valid"])
    proposals = scored = pair_scores = aspect_crops = None
    if {"iou", "proposal", "aspect"} & set(protocols):
      proposals = _device_to_host(predict(device_batch, False))
    if "ranking" in protocols:
      scored = _device_to_host(predict(device_batch, True))
    if "pairs" in protocols:
      if "pair_boxes" not in host:
        raise ValueError("the 'pairs' protocol needs a dataset with rated crop pairs (fcdb)")
      pairs = host["pair_boxes"]
      pair_scores = _score_boxes(predict, batch, to_device,
                                 pairs.reshape(len(pairs), -1, 4)).reshape(pairs.shape[:3])
    if "aspect" in protocols:
      aspect_crops = _aspect_crops(predict, batch, to_device, host, proposals)
    for i in np.flatnonzero(host["valid"]):
      height, width = (int(v) for v in host["image_size"][i])
      to_px = np.array([width, height, width, height], np.float64)
      mask = host["box_mask"][i].astype(bool)
      gt_px = host["boxes"][i][mask] * to_px
      gt_scores = host["box_scores"][i][mask]
      image_id = host["image_id"][i]
      if proposals is not None:
        order = np.argsort(-proposals["scores"][i], kind="stable")
        pred_px = proposals["boxes"][i][order] * to_px
        pred_scores = proposals["scores"][i][order]
        if "iou" in accumulators:
          accumulators["iou"].add(image_id, pred_px, gt_px, (height, width),
                                  pred_scores=pred_scores)
        if "proposal" in accumulators:
          accumulators["proposal"].add(image_id, pred_px, pred_scores, gt_px, gt_scores)
        local = i - first_local
        if (examples is not None and len(examples) < max_examples and len(gt_px)
            and 0 <= local < len(batch["valid"]) and "image" in batch):
          iou, _, g = metrics.iou_and_bde(pred_px[0], gt_px, (height, width))
          examples.append(Example(
              _text(batch["image_id"][local]),
              photos.from_canvas(batch["image"][local], batch["image_valid_hw"][local]),
              (width, height), gt_px[g], pred_px[0], float(pred_scores[0]), iou))
      if scored is not None:
        accumulators["ranking"].add(image_id, scored["scores"][i][mask], gt_scores)
      if pair_scores is not None:
        boxes = host["pair_boxes"][i] * to_px
        accumulators["pairs"].add(image_id, pair_scores[i, :, 0], pair_scores[i, :, 1],
                                  host["pair_weights"][i], boxes[:, 0], boxes[:, 1])
      if aspect_crops is not None:
        boxes, scores = aspect_crops[i]
        accumulators["aspect"].add(image_id, boxes.astype(np.float64), gt_px, (height, width),
                                   pred_scores=scores)
  results: dict[str, float] = {}
  for protocol in protocols:
    if per_image is not None:
      per_image[protocol] = {_text(k): v for k, v in accumulators[protocol].per_image.items()}
    result = accumulators[protocol].result()
    if protocol == "aspect":
      result = {f"aspect_{k}": v for k, v in result.items() if k != "num_images"}
    results.update(result)
  return results


def run_benchmarks(predict: PredictFn, config: ml_collections.ConfigDict, *,
                   to_device: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]],
                   output_dir: str | None, step: int | None = None,
                   prepare: bool = True,
                   batch_transform: Callable[[Iterator, ml_collections.ConfigDict, str],
                                             Iterator] | None = None,
                   report_examples: int | None = None
                   ) -> dict[str, dict[str, Any]]:
  """Evaluates every entry of `config.eval.benchmarks`; writes their results to `output_dir`.

  Each benchmark's record goes to `<dataset>_<builder_config>_<split>.json` (the latest,
  replaced atomically) and is appended to the `.jsonl` of the same name (the history); see
  `write_result`. `step` is the checkpoint's step, recorded with the result. The values of
  every photo go to `<same name>.per_image.json` (the latest evaluation's: step, split and
  protocol -> image_id -> values).

  With `report_examples` (a count, 0 for none), `output_dir/report.html` is written too: every
  metric table and that many photos of the best benchmark with their crops (`write_report`).

  `batch_transform(batches, data_config, split)`, if given, adapts the host batches (the trainer
  adds reference tokens with it).

  Returns:
    name -> metrics (plus num_images, skipped counts by reason, dataset, builder_config, split,
    step).
  """
  all_results = {}
  examples: dict[str, list[Example]] = {}
  for name, benchmark in config.eval.benchmarks.items():
    protocols = parse_protocols(benchmark["protocols"])
    data_config = benchmark_data_config(config, benchmark)
    split_name = benchmark["split"].split("[")[0]
    try:
      if prepare:
        builder = prepare_lib.ensure_dataset(data_config, config.cad, seed=config.seed)
      else:
        builder = input_pipeline.load_builder(
            input_pipeline.DataSettings.from_config(data_config))
      if split_name not in builder.info.splits:
        raise FileNotFoundError(f"{builder.info.full_name} has no split {split_name!r} "
                                f"(its splits: {', '.join(builder.info.splits) or 'none'})")
    except Exception as e:  # pylint: disable=broad-except
      if not benchmark.get("optional", False):
        raise
      print(f"Skipping optional benchmark {name}: {e}", flush=True)
      continue
    batches = input_pipeline.create_eval_iterator(
        data_config, global_batch_size=config.eval.batch_size)
    if batch_transform is not None:
      batches = batch_transform(batches, data_config, benchmark["split"])
    per_image = {}
    result = evaluate_benchmark(predict, batches, to_device, protocols,
                                examples=examples.setdefault(name, []),
                                max_examples=report_examples or 0, per_image=per_image)
    skipped = schema.build_report(builder).get(split_name, {}).get("skipped", {})
    result.update(dataset=data_config.dataset, builder_config=data_config.builder_config or "",
                  split=benchmark["split"], skipped=skipped, step=step)
    all_results[name] = result
    if output_dir and jax.process_index() == 0:
      path = write_result(output_dir, result)
      artifacts.atomic_write_json(
          per_image_path(path), {"step": step, "split": benchmark["split"], **per_image})
      logging.info("Wrote %s", path)
  if all_results:
    numeric = {name: {k: v for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}
               for name, r in all_results.items()}
    print(format_table(numeric, transpose=True), flush=True)
  if report_examples is not None and output_dir and jax.process_index() == 0:
    # The best benchmark's photos; another's where it showed none (e.g. ranking only).
    shown = config.eval.get("best_benchmark")
    if not examples.get(shown):
      shown = next((name for name, found in examples.items() if found), None)
    path = write_report(output_dir, all_results, examples.get(shown, []), examples_of=shown)
    print(f"Report: {path}", flush=True)
  return all_results


# --------------------------------------------------------------------------------------- report
def write_report(output_dir: str, results: Mapping[str, Mapping[str, Any]],
                 examples: Sequence[Example], *, examples_of: str | None) -> str:
  """Writes `output_dir/report.html` (atomically) and returns its path.

  One self-contained page: each benchmark's metrics (the values of its JSON result) and the
  `examples` (photos of benchmark `examples_of`), each with its ground truth and top-1 crop drawn
  over it and their IoU. The photos are embedded JPEG thumbnails: the file reads offline and
  can be moved alone.
  """
  truth_colour, crop_colour = html_pages.COLOURS[1], html_pages.COLOURS[0]
  steps = sorted({r.get("step") for r in results.values() if r.get("step") is not None})
  title = "procrop evaluation" + (f", step {', '.join(map(str, steps))}" if steps else "")
  parts = [f"<h1>{html.escape(title)}</h1>"]
  described = ("dataset", "builder_config", "split", "step")
  for name, result in results.items():
    source = " ".join(str(result[k]) for k in ("dataset", "builder_config", "split")
                      if result.get(k))
    rows = [(key, _format_cell(value)) for key, value in result.items() if key not in described]
    parts.append(f"<h2>{html.escape(name)} <small>({html.escape(source)})</small></h2>"
                 + html_pages.table(("metric", "value"), rows))
  if examples:
    parts.append(
        f"<h2>The first {len(examples)} photos of {html.escape(str(examples_of))}</h2><p>"
        f"<b style='color:{truth_colour}'>ground truth</b> and <b style='color:{crop_colour}'>"
        "top-1 crop</b> (with its score), over the photo as the model saw it</p>")
    figures = []
    for example in examples:
      boxes = [html_pages.box(example.truth, example.size, truth_colour, "truth",
                              label_below=True),
               html_pages.box(example.prediction, example.size, crop_colour,
                              f"top-1 {example.score:.2f}")]
      figures.append(
          f"<figure>{html_pages.photo(html_pages.jpeg_data_uri(example.pixels), boxes)}"
          f"<figcaption>{html.escape(example.image_id)}: IoU {example.iou:.3f}</figcaption>"
          "</figure>")
    parts.append(f"<div class=grid>{''.join(figures)}</div>")
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, REPORT_FILE)
  artifacts.atomic_write_text(path, html_pages.page(title, parts))
  return path


def _format_cell(value: Any) -> str:
  if isinstance(value, Mapping):  # The skipped counts by reason.
    return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
  return _format_value(value, 4)


# ------------------------------------------------------------------------------------- printing
def _format_value(value: Any, precision: int) -> str:
  if value is None:
    return "-"
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return f"{float(value):.{precision}f}"
  return str(value)


def format_table(results: Mapping[str, Mapping[str, Any]], *, precision: int = 4,
                 transpose: bool = False) -> str:
  """Formats metric dicts as an aligned plain-text table.

  Args:
    results: name (a model, dataset or protocol) -> metrics dict, e.g. a `result()`.
    precision: decimals for floats; ints (counts) print as ints, missing values as "-".
    transpose: False: one row per name, one column per metric (keys in first-seen order);
      True: one row per metric, one column per name (better for many keys).

  Returns:
    The table, lines joined by newlines, no trailing newline.
  """
  names = list(results)
  keys: list[str] = []
  for metrics in results.values():
    keys.extend(k for k in metrics if k not in keys)
  cells = [[_format_value(results[name].get(key), precision) for key in keys] for name in names]
  if transpose:
    header = ["metric"] + names
    rows = [[key] + [cells[i][j] for i in range(len(names))] for j, key in enumerate(keys)]
  else:
    header = [""] + keys
    rows = [[name] + row for name, row in zip(names, cells)]
  widths = [max(len(str(r[c])) for r in [header] + rows) for c in range(len(header))]

  def line(row: Sequence[str]) -> str:
    # First column (names) left-aligned, numbers right-aligned.
    return "  ".join([row[0].ljust(widths[0])]
                     + [v.rjust(w) for v, w in zip(row[1:], widths[1:])]).rstrip()

  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
