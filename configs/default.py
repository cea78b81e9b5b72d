r"""The embedded default: trains ProCrop on CAD data generated from scikit-image's photos.

Runs on 2 CPU cores in a few minutes with no downloads beyond the installed packages:

  python -m procrop_jax.main --config=configs/default.py --workdir=workdirs/default

Every other config starts from this one and changes only what differs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default configuration."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---------------------------------------------------------------- data
  config.data = ml_collections.ConfigDict()
  config.data.dataset = "procrop_cad"  # A TFDS builder name (procrop_jax.datasets).
  config.data.builder_config = "default"
  config.data.data_dir = "data/tfds"  # TFDS data directory.
  config.data.manual_dir = "data/manual/procrop_cad_default"  # Where the builder reads raw files.
  config.data.train_split = "train[:90%]"
  config.data.eval_split = "train[90%:]"
  config.data.image_size = 256  # Images are resized (aspect kept) and padded to this square.
  config.data.max_boxes = 16  # Ground-truth boxes padded to this count, with a mask.
  config.data.max_pairs = 10  # Rated crop pairs (FCDB's) padded to this count, weight 0.
  config.data.augment = True
  # Share of training views cropped around the target box (the rest keep the whole photo).
  config.data.crop_probability = 0.5
  config.data.prefetch = 2
  # Frozen-backbone features cached for `views` augmented views of every training example
  # (procrop_jax/feature_cache.py); 0 trains from images. Needs backbone_learning_rate = 0, or
  # optim.trainable_backbone_blocks >= 0 (the cache then holds the trained blocks' input).
  config.data.feature_cache = ml_collections.ConfigDict()
  config.data.feature_cache.views = 0
  config.data.feature_cache.dir = ""  # Empty: DATA_DIR/feature_cache.
  # Split the cache covers; empty: data.train_split. A wider split (e.g. "train") lets runs that
  # train on different parts of it (cross-validation folds) share one cache: each samples only
  # the rows of its own training photos.
  config.data.feature_cache.split = ""
  # Decode once, augment on the device (procrop_jax/canvas_cache.py, device_augment.py): every
  # training photo is decoded once into a uint8 canvas of side image_size * oversample, and the
  # crop, flip, resize and colour jitter run inside the jitted train step. The host's work per
  # example becomes a copy: the recipe for accelerators, whose hosts cannot decode fast enough.
  config.data.canvas_cache = ml_collections.ConfigDict()
  config.data.canvas_cache.enabled = False
  config.data.canvas_cache.dir = ""  # Empty: DATA_DIR/canvas_cache.
  config.data.canvas_cache.oversample = 1.25
  # The share of examples taken as they are (no crop, flip or colour jitter), as the feature
  # cache's view 0 is for 1 in `views`: 1 / 8 mirrors the CPU recipe's 8 views. Cross-validated
  # (experiments/fcdb/RESULTS.md, CV6): it lifts the canvas path to the feature-cache recipe.
  config.data.canvas_cache.plain_probability = 0.125

  # Weak-label generation for the embedded default (procrop_jax.cad).
  config.cad = ml_collections.ConfigDict()
  config.cad.source = "skimage"  # "skimage" or a folder of photos.
  config.cad.variants_per_photo = 8
  config.cad.min_area_fraction = 0.3
  config.cad.max_area_fraction = 0.8
  config.cad.workers = 2
  config.cad.max_side = 640  # Longer side of generated canvases, in pixels.
  # A CAD set some of whose photos failed (a bad file, a full disk) is refused unless True.
  config.cad.allow_failures = False

  # CAD refinement rounds (--mode=refine_cad, procrop_jax/refine_cad.py): the model's crops that
  # pass these rules (procrop_jax/cad/refine.py) become extra annotation lines.
  config.refine = ml_collections.ConfigDict()
  config.refine.split = ""  # Canvases to refine; empty: config.data.train_split (never eval's).
  config.refine.best = True  # The best checkpoint (when evaluation kept one); else the latest.
  config.refine.ratios = (1.0, 5 / 4, 4 / 3, 7 / 5, 3 / 2, 16 / 9)  # W/H; inverses too.
  config.refine.aspect_tolerance = 0.03  # Relative distance to the nearest ratio.
  config.refine.min_label_iou = 0.8  # IoU with the pseudo-label must exceed this.
  config.refine.min_score = 0.4  # The model's score must exceed this.
  config.refine.duplicate_iou = 0.9  # Dropped above this IoU with a box already kept.
  config.refine.max_boxes = 4  # Extra lines per canvas.

  # --------------------------------------------------------------- model
  config.model = ml_collections.ConfigDict()
  config.model.backbone = "lite0"  # lite0 | lite1 | lite2
  config.model.pretrained = True  # ImageNet weights from the efficientnet-liteN packages.
  config.model.freeze_backbone_bn = True
  config.model.use_stride16 = True  # Fuse stride-16 features into the stride-32 tokens.
  config.model.d_model = 256
  config.model.num_heads = 8
  config.model.mlp_dim = 1024
  config.model.num_encoder_layers = 3
  config.model.num_decoder_layers = 3
  config.model.num_queries = 90
  config.model.dropout = 0.1
  config.model.fusion = "concat_mlp"  # concat_mlp (the paper's) | cross_attention
  # g > 0: each crop query's content starts from the image tokens on a g x g grid inside its
  # box (0: from zero, Conditional DETR's).
  config.model.box_content_grid = 0
  # K retrieved professional photos; 0 disables retrieval. The default database has 9 photos,
  # so each example sees the 8 that are not its own source.
  config.model.num_references = 8

  # ----------------------------------------------------------- retrieval
  config.retrieval = ml_collections.ConfigDict()
  # A database from `--mode=build_index`; empty: built in memory from the database photos below.
  config.retrieval.index_dir = ""
  config.retrieval.tokens_grid = 4  # Reference tokens per photo: tokens_grid ** 2 (fp16, 40 KB).
  config.retrieval.embedding_grid = 4  # Layout cells of the composition embedding.
  config.retrieval.embedding_dim = 256
  config.retrieval.search = "auto"  # auto | brute_force | scann | exact
  config.retrieval.scann = ml_collections.ConfigDict()  # ScaNN parameter overrides.
  config.retrieval.batch_size = 32  # Photos per embedding batch.
  # The professional photos: a TFDS dataset (photo_folder by default). Empty fields follow the
  # CAD source: "skimage" -> scikit-image's photos, a folder -> that folder.
  config.retrieval.database_dataset = "photo_folder"
  config.retrieval.database_config = ""
  config.retrieval.database_manual_dir = ""
  config.retrieval.database_data_dir = ""  # Empty: config.data.data_dir.
  config.retrieval.database_split = "train"

  # ---------------------------------------------------------------- loss
  config.loss = ml_collections.ConfigDict()
  config.loss.focal_alpha = 0.25
  config.loss.focal_gamma = 2.0
  config.loss.score_weight = 2.0
  config.loss.l1_weight = 5.0
  config.loss.giou_weight = 2.0
  config.loss.match_score_cost = 2.0
  config.loss.match_l1_cost = 5.0
  config.loss.match_giou_cost = 2.0
  config.loss.soft_label_iou = 0.85  # Unmatched queries this close to a GT box get a soft target.
  # "matched": 1 for the matched query (DETR, the paper); "iou": every query's score learns its
  # box's IoU with the ground truth (quality focal loss; see losses.py).
  config.loss.score_target = "matched"
  # Rated crop pairs (FCDB's) scored through the given-box path (losses.py): a pairwise ranking
  # loss weighted by the vote margin, and the IoU quality loss on those boxes; and the expert
  # crop ranked above each rated crop (gt_rank_weight). 0 disables.
  config.loss.rank_weight = 0.0
  config.loss.given_iou_weight = 0.0
  config.loss.gt_rank_weight = 0.0
  config.loss.aux_loss = True

  # ----------------------------------------------------------- optimizer
  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-4
  # 0 freezes the ImageNet backbone (not differentiated: a CPU-sized default). The benchmark
  # configs fine-tune it.
  config.optim.backbone_learning_rate = 0.0
  # With backbone_learning_rate > 0: -1 trains the whole backbone; N >= 0 only its last N MBConv
  # blocks and its 1x1 head conv (the rest stays as ImageNet left it, so a feature cache can
  # hold the tail's input: configs/fcdb_cpu.py).
  config.optim.trainable_backbone_blocks = -1
  config.optim.weight_decay = 1e-4
  config.optim.warmup_steps = 20
  config.optim.schedule = "cosine"  # cosine | constant
  config.optim.grad_clip_norm = 0.1
  config.optim.ema_decay = 0.0  # 0 disables the EMA of parameters.

  # --------------------------------------------------------------- train
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 8  # Global batch size, split over the mesh's data axis.
  config.train.num_steps = 150
  config.train.log_every = 10
  config.train.checkpoint_every = 50
  config.train.keep_checkpoints = 3
  # Fine-tuning: start from a trained model's parameters (a workdir or a shipped model's name);
  # ignored when the workdir has a checkpoint to resume from. Empty: from ImageNet weights.
  config.train.init_from = ""
  # True: modules the trained model lacks (e.g. retrieval's, when it was trained with K = 0)
  # start from their initialisation; every parameter the two share must still match.
  config.train.init_new_modules = False
  config.train.eval_every = 50
  # (start, stop): a JAX profile (TensorBoard's profile tab) of the train steps that take the
  # step counter from start to stop, written to WORKDIR/profile; () profiles nothing. On the
  # command line: --config.train.profile_steps="(10, 15)".
  config.train.profile_steps = ()

  # ---------------------------------------------------------------- mesh
  config.mesh = ml_collections.ConfigDict()
  # -1 takes all remaining devices. "data" splits the batch; "model" shards parameters.
  config.mesh.shape = (-1, 1)
  config.mesh.axes = ("data", "model")
  # (regex over the parameter path, spec of its trailing dims); first match wins. See sharding.py.
  config.mesh.param_rules = (
      (r"backbone/.*", ()),  # The backbone is small: replicated.
      (r".*kernel", (None, "model")),  # Head matrices: output features split over "model".
  )

  # ---------------------------------------------------------------- eval
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 8
  # The checkpoint with the best value of this benchmark's metric is kept in checkpoints_best/.
  config.eval.best_benchmark = "cad_val"
  config.eval.best_metric = "iou"
  # --mode=eval draws this many photos of best_benchmark with their crops in eval/report.html.
  config.eval.report_examples = 12
  # name -> benchmark; see procrop_jax/evaluate.py for the fields and protocols.
  config.eval.benchmarks = ml_collections.ConfigDict()
  # The held-out slice of the training data (dataset and directories as in config.data).
  config.eval.benchmarks.cad_val = dict(split=config.data.eval_split, protocols="iou")

  # ----------------------------------------------------------- inference
  # Test-time refinements used by evaluation and cropping (procrop_jax/tta.py).
  config.inference = ml_collections.ConfigDict()
  config.inference.flip = False  # Also run the mirrored photo; average / pool the results.
  config.inference.vote_iou = 0.0  # > 0: each crop -> score-weighted mean of its overlaps.
  config.inference.rescore = False  # Rank proposals by the given-box path's scores.

  # -------------------------------------------------------------- export
  # --mode=export: the run as a shipped model (procrop_jax/export.py, model_zoo.py).
  config.export = ml_collections.ConfigDict()
  config.export.output_dir = ""  # Empty: WORKDIR/export.
  config.export.best = True  # The best checkpoint by config.eval.best_benchmark; else latest.
  config.export.dtype = "float16"  # float16 | float32 storage of the parameters.
  # Comma-separated summary.json files of the recipe's cross-validation (experiments/fcdb/
  # cross_validate.py, cv_canvas.py): recorded in the model card as its figures, since a model
  # trained on every photo has no held-out photo of its own.
  config.export.cross_validation = ""

  # ---------------------------------------------------------------- crop
  config.crop = ml_collections.ConfigDict()
  config.crop.input_dir = ""  # Photos to crop with --mode=crop; empty: scikit-image's photos.
  config.crop.output_dir = ""  # Empty: WORKDIR/crops.
  config.crop.top_k = 5
  config.crop.nms_iou = 0.7  # Crops overlapping a better one more than this are dropped.
  config.crop.aspect_ratio = 0.0  # width / height of every crop; 0: free.
  # The canvas the Cropper resizes photos to by default (--canvas-size overrides it); 0: the
  # training size, data.image_size. A shipped model records the one it is measured at.
  config.crop.canvas_size = 0
  # The canvases the Cropper puts photos on: buckets | orientation | square (cropper.py).
  config.crop.canvas_layout = "buckets"
  config.crop.after_training = True  # The main job ends by cropping config.crop.input_dir.
  return config
