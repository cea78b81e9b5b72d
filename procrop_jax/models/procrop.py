"""ProCrop (arXiv 2505.22490): crop proposals guided by retrieved professional compositions.

EfficientNet-Lite features (stride 32, optionally fused with stride 16) -> d_model tokens with
2-D sine positions -> transformer encoder -> fusion with the K retrieved professional photos'
reference tokens -> Conditional-DETR decoder with N crop queries, each predicting a crop box and
a sigmoid score.

Image tokens live on the padded S x S canvas (image at the top-left): tokens that cover only
padding are masked out of encoder attention and decoder cross-attention, and every position
(token encodings, anchors, predicted boxes) is in image coordinates, 1.0 = the image's edge.

Queries. Each crop query is an anchor box (cx, cy, w, h) plus a content vector that starts at
zero (Conditional DETR's decoder input). The anchor gives the query's positional embedding (an
MLP of its sine embedding) and its reference point (cx, cy), from which the conditional spatial
query is built. The N learned queries have learned anchors and predict their box as an offset to
the anchor in logit space. User-given boxes (`query_boxes`) go through exactly the same path as
anchors, with the box kept fixed, and get a score each: this is how candidate crops are ranked
(GAIC-style benchmarks, aspect-constrained cropping). They are appended to the learned queries
and attend to them but not to each other, so a box's score does not depend on the other
candidates. Making the learned part of a query its anchor box, rather than a free embedding, is
what keeps this scoring path the one training shapes (a given box is just another anchor).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from procrop_jax import box_ops
from procrop_jax import settings as settings_lib
from procrop_jax.models import efficientnet_lite
from procrop_jax.models import position_encoding
from procrop_jax.models import transformer

FUSIONS = ("concat_mlp", "cross_attention")
FEATURE_KEYS = ("stride32", "stride16")  # Backbone maps the head reads.
# The score head starts at this probability for every query (focal-loss practice, RetinaNet).
# The per-layer arrays of a decoder's encoding (see ProCrop.decode); it also holds "memory_mask".
ENCODING_KEYS = ("memory_keys", "memory_values", "context_keys", "context_values")
_PRIOR_PROB = 0.01


def _inverse_sigmoid(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  x = jnp.clip(x, eps, 1 - eps)
  return jnp.log(x / (1 - x))


class ReferenceEncoder(nnx.Module):
  """Reference tokens [B, K, T, C_ref] -> [B, K * T, d_model]: LayerNorm, Linear, plus a learned
  embedding per (reference, token) so the fusion knows which photo and which cell a token is."""

  def __init__(self, in_channels: int, d_model: int, num_references: int, num_tokens: int, *,
               rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(in_channels, epsilon=1e-5, rngs=rngs)
    self.proj = nnx.Linear(in_channels, d_model, rngs=rngs)
    self.embed = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (num_references, num_tokens, d_model)))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.proj(self.norm(tokens.astype(jnp.float32))) + self.embed[...]
    return x.reshape(x.shape[0], -1, x.shape[-1])


class ConcatMLPFusion(nnx.Module):
  """The paper's fusion: [image tokens; reference tokens] -> token-mixing MLP -> image tokens.

  The concatenated sequence (N_img + K * T tokens) is mapped back to N_img tokens by an MLP along
  the token axis (LayerNorm over channels, Linear, ReLU, Dropout, Linear), then ReLU and
  LayerNorm. Tokens on padding are zeroed before mixing, so padding contributes nothing, and
  zeroed again after (they stay masked in the decoder).
  """

  def __init__(self, d_model: int, num_image_tokens: int, num_reference_tokens: int,
               dropout: float, *, rngs: nnx.Rngs):
    n_in = num_image_tokens + num_reference_tokens
    self.num_image_tokens = num_image_tokens
    self.norm = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
    self.fc1 = nnx.Linear(n_in, n_in, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.fc2 = nnx.Linear(n_in, num_image_tokens, rngs=rngs)
    self.out_norm = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, refs: jax.Array, *,
               train: bool = False) -> jax.Array:
    keep = jnp.concatenate([mask, jnp.ones(refs.shape[:2], bool)], axis=1)[..., None]
    z = self.norm(jnp.concatenate([x, refs], axis=1)) * keep
    z = jnp.swapaxes(z, 1, 2)  # [B, D, tokens]: mix along the token axis.
    z = self.fc2(self.dropout(jax.nn.relu(self.fc1(z)), deterministic=not train))
    z = self.out_norm(jax.nn.relu(jnp.swapaxes(z, 1, 2)))
    return z * mask[..., None]


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """What the model reads from `config.model` (`pretrained` is its weight loader's)."""
  backbone: str
  freeze_backbone_bn: bool
  use_stride16: bool
  d_model: int
  num_heads: int
  mlp_dim: int
  num_encoder_layers: int
  num_decoder_layers: int
  num_queries: int
  dropout: float
  fusion: str
  num_references: int
  # g > 0: a query's content vector starts from the image tokens sampled on a g x g grid inside
  # its anchor box (0: from zero, as in Conditional DETR).
  box_content_grid: int


class ProCrop(nnx.Module):
  """The ProCrop crop proposer. See the module docstring.

  Constructor: `ProCrop(model_config, *, image_size, tokens_grid, rngs)` (model_config: a
  `config.model`, read as `ModelSettings`), or
  `ProCrop.from_config(config, rngs=...)` which reads config.model, config.data.image_size and
  config.retrieval.tokens_grid. `image_size` (the padded canvas side S) fixes the number of image
  tokens, ceil(S / 32) ** 2, which the concat_mlp fusion's token-mixing layers depend on (other
  variants run at any size).
  ImageNet weights are not loaded here: call
  `procrop_jax.weights.imagenet.load_pretrained(model.backbone, ...)`.
  """

  def __init__(self, model_config: Mapping[str, Any], *, image_size: int, tokens_grid: int,
               rngs: nnx.Rngs):
    cfg = settings_lib.read(ModelSettings, model_config, "config.model")
    d = cfg.d_model
    if d % 4 or d % cfg.num_heads:
      raise ValueError(f"d_model={d} must be a multiple of 4 and of num_heads="
                       f"{cfg.num_heads}")
    if cfg.fusion not in FUSIONS:
      raise ValueError(f"config.model.fusion={cfg.fusion!r}: use one of {FUSIONS}")
    self.d_model = d
    self.num_heads = cfg.num_heads
    self.num_queries = cfg.num_queries
    self.num_references = cfg.num_references
    self.fusion_type = cfg.fusion
    self.use_stride16 = cfg.use_stride16
    self.box_content_grid = cfg.box_content_grid
    self.image_size = image_size
    self.tokens_grid = tokens_grid
    self.grid = math.ceil(image_size / 32)  # Backbone convs are "SAME": ceil at every stride.
    dropout = cfg.dropout
    # Dropout layers draw from a stream tagged "dropout", so `nnx.reseed(model, dropout=key)`
    # reaches them whatever streams the caller's Rngs has.
    try:
      drop_key = rngs.dropout()
    except (AttributeError, KeyError):  # An Rngs with only a "params" stream.
      drop_key = rngs.params()
    drop_rngs = nnx.Rngs(dropout=drop_key)

    # Backbone and input projection.
    self.backbone = efficientnet_lite.EfficientNetLite(
        cfg.backbone, rngs=rngs, frozen_bn=cfg.freeze_backbone_bn)
    channels = self.backbone.feature_channels
    self.input_proj = nnx.Linear(channels["stride32"], d, rngs=rngs)  # A 1x1 convolution.
    self.stride16_proj = (nnx.Conv(channels["stride16"], d, (3, 3), strides=2, padding="SAME",
                                   rngs=rngs) if self.use_stride16 else None)
    self.input_norm = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)

    layer_args = (d, cfg.num_heads, cfg.mlp_dim, dropout)
    self.encoder_layers = nnx.List([
        transformer.EncoderLayer(*layer_args, rngs=_mixed(rngs, drop_rngs))
        for _ in range(cfg.num_encoder_layers)])

    # Fusion with the professional references (absent when K == 0).
    num_ref_tokens = tokens_grid ** 2
    if self.num_references > 0:
      self.reference_encoder = ReferenceEncoder(channels["stride32"], d, self.num_references,
                                                num_ref_tokens, rngs=rngs)
      if self.fusion_type == "concat_mlp":
        self.fusion = ConcatMLPFusion(d, self.grid ** 2, self.num_references * num_ref_tokens,
                                      dropout, rngs=_mixed(rngs, drop_rngs))
      else:
        self.fusion = transformer.CrossAttentionBlock(d, cfg.num_heads, dropout,
                                                      rngs=_mixed(rngs, drop_rngs))
    else:
      self.reference_encoder = None
      self.fusion = None

    # Conditional-DETR decoder.
    key_xy, key_wh = jax.random.split(rngs.params())
    n = self.num_queries
    # Anchor centres spread over the image; sizes from half to nearly all of it (crops are big).
    anchors = jnp.concatenate([jax.random.uniform(key_xy, (n, 2), minval=0.05, maxval=0.95),
                               jax.random.uniform(key_wh, (n, 2), minval=0.4, maxval=0.9)], -1)
    self.anchor_logits = nnx.Param(_inverse_sigmoid(anchors))
    self.anchor_pos = transformer.MLP(2 * d, d, d, 2, rngs=rngs)  # sine(cx,cy,w,h) -> query_pos.
    self.query_scale = transformer.MLP(d, d, d, 2, rngs=rngs)
    # What lies inside a box (which crop people prefer depends on it) read directly, not only
    # through attention from the box's centre: the tokens on a g x g grid in the box -> content.
    g = cfg.box_content_grid
    self.box_content = nnx.Linear(g * g * d, d, rngs=rngs) if g > 0 else None
    self.decoder_layers = nnx.List([
        transformer.ConditionalDecoderLayer(*layer_args, is_first=i == 0,
                                            rngs=_mixed(rngs, drop_rngs))
        for i in range(cfg.num_decoder_layers)])
    self.decoder_norm = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.box_head = transformer.MLP(d, d, 4, 3, zero_last=True, rngs=rngs)
    prior_bias = -math.log((1 - _PRIOR_PROB) / _PRIOR_PROB)
    self.score_head = nnx.Linear(d, 1, bias_init=nnx.initializers.constant(prior_bias),
                                 rngs=rngs)

  @classmethod
  def from_config(cls, config: Mapping[str, Any], *, rngs: nnx.Rngs) -> "ProCrop":
    """Builds from the full experiment config (model, data.image_size, retrieval.tokens_grid)."""
    return cls(config["model"], image_size=config["data"]["image_size"],
               tokens_grid=config["retrieval"]["tokens_grid"], rngs=rngs)

  # ------------------------------------------------------------------------------ image tokens
  def encode(self, images: jax.Array | None, image_valid_hw: jax.Array, *,
             train: bool = False, features: Mapping[str, jax.Array] | None = None
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Backbone + projection + encoder: (tokens [B, S, D], positions [B, S, D], mask [B, S]).

    `features` (the backbone's "stride32" and "stride16" maps, e.g. from a feature cache)
    replace the backbone pass; `images` is then unused.
    """
    return self._encode(images, image_valid_hw, train=train, features=features)[:3]

  def _encode(self, images, image_valid_hw, *, train, features):
    """`encode`'s three arrays and the token grid's (h, w)."""
    if features is None:
      feats = self.backbone_features(images, train=train)
    else:
      feats = self._features_from_cache(features, train=train)
    x = self.input_proj(feats["stride32"].astype(jnp.float32))
    b, h, w, _ = x.shape
    # Only the concat_mlp fusion's token mixing needs the token count it was built for.
    if isinstance(self.fusion, ConcatMLPFusion) and (h, w) != (self.grid, self.grid):
      raise ValueError(
          f"ProCrop was built for {self.image_size}px canvases ({self.grid}x{self.grid} tokens) "
          f"but got {h}x{w} tokens; build it "
          "with image_size=config.data.image_size (or ProCrop.from_config).")
    if self.stride16_proj is not None:
      x = x + self.stride16_proj(feats["stride16"].astype(jnp.float32))
    x = self.input_norm(x).reshape(b, h * w, self.d_model)
    pos, mask = self._token_positions(h, w, image_valid_hw)
    for layer in self.encoder_layers:
      x = layer(x, pos, mask, train=train)
    return x, pos, mask, (h, w)

  def _token_positions(self, h: int, w: int, image_valid_hw: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """(positions [B, h * w, D], mask [B, h * w]) of an h x w token grid."""
    return (position_encoding.grid_sine_embedding(h, w, image_valid_hw, self.d_model),
            position_encoding.token_valid_mask(h, w, image_valid_hw))

  def _features_from_cache(self, features: Mapping[str, jax.Array], *, train: bool
                           ) -> Mapping[str, jax.Array]:
    """Cached maps -> the maps the head reads: a cached block input (a feature cache of a run
    that fine-tunes the backbone's last blocks) goes through those blocks first."""
    tails = {k: i for k in features
             if (i := efficientnet_lite.parse_tail_input_name(k)) is not None}
    if not tails:
      return features
    if len(tails) > 1:
      raise ValueError(f"features hold several block inputs: {sorted(tails)}")
    (name, start), = tails.items()
    feats = {k: v for k, v in features.items() if k != name}
    feats["stride32"] = self.backbone.run_tail(features[name].astype(jnp.float32), start,
                                               train=train)
    return feats

  def backbone_features(self, images: jax.Array, *, train: bool = False
                        ) -> dict[str, jax.Array]:
    """The backbone maps the head reads: {"stride32", "stride16" (when used)}, NHWC."""
    feats = self.backbone(images, train=train)
    return {k: feats[k] for k in FEATURE_KEYS if k in feats and
            (k == "stride32" or self.use_stride16)}

  def fuse(self, x: jax.Array, pos: jax.Array, mask: jax.Array,
           reference_tokens: jax.Array | None, *, train: bool = False) -> jax.Array:
    """Fuses the image tokens with the reference tokens (a no-op without references)."""
    if self.fusion is None or reference_tokens is None or reference_tokens.shape[1] == 0:
      if reference_tokens is not None and reference_tokens.shape[1] and self.fusion is None:
        raise ValueError("this model was built with num_references=0 but got "
                         f"reference_tokens of shape {reference_tokens.shape}")
      return x
    expected = (self.num_references, self.tokens_grid ** 2,
                self.backbone.feature_channels["stride32"])
    if reference_tokens.ndim != 4 or reference_tokens.shape[1:] != expected:
      raise ValueError(f"reference_tokens must be [B, K, T, C_ref] = [B, {expected[0]}, "
                       f"{expected[1]}, {expected[2]}], got {reference_tokens.shape}")
    refs = self.reference_encoder(reference_tokens)
    if self.fusion_type == "concat_mlp":
      return self.fusion(x, mask, refs, train=train)
    return self.fusion(x, pos, refs, train=train)

  # -------------------------------------------------------------------------------- the decoder
  def decode(self, memory: jax.Array | None, pos: jax.Array | None, mask: jax.Array,
             query_boxes: jax.Array | None = None, *, train: bool = False,
             with_proposals: bool = False, encoding: Mapping[str, jax.Array] | None = None,
             image_valid_hw: jax.Array | None = None, token_hw: tuple[int, int] | None = None
             ) -> tuple[list[dict], dict[str, jax.Array]]:
    """Runs the decoder; returns one prediction dict per decoder layer (last = final), and the
    photos' encoding.

    With `query_boxes` [B, Q, 4], the Q given boxes are appended to the N learned queries as
    fixed anchors. The learned queries attend only to each other (exactly as without given boxes)
    and each given box attends to the learned queries and itself, never to the other given
    boxes: a box's score does not depend on which other candidates are scored with it, and the
    context it sees is the one training builds. Only the Q given boxes' predictions are returned.

    The encoding holds what a given box's row reads from the rest: the image tokens' mask
    ("memory_mask" [B, S]) and, per decoder layer, their cross-attention keys and values
    ("memory_keys" [B, layers, S, 2D], "memory_values" [B, layers, S, D]) and the learned
    queries' self-attention keys and values ("context_keys", "context_values" [B, layers, N,
    D]). Passed back as `encoding` (with `query_boxes`; memory and pos then unused), only the
    given boxes' rows are computed, with the same result: inference scoring boxes on photos
    whose proposals it has decoded.

    With `box_content_grid`, a box's content is sampled from the image tokens: `image_valid_hw`
    (as in `__call__`) is required, `token_hw` is the tokens' grid (default: the model's
    square one), and the encoding also holds "memory" [B, S, D], "image_valid_hw" and
    "token_hw" [B, 2].
    """
    d = self.d_model
    n = self.num_queries
    b = mask.shape[0]
    anchors = jnp.broadcast_to(jax.nn.sigmoid(self.anchor_logits[...]), (b, n, 4))
    self_attn_mask = None
    if encoding is not None and (query_boxes is None or with_proposals):
      raise ValueError("an encoding scores given boxes only: pass query_boxes, no proposals")
    if query_boxes is not None:
      given = jnp.clip(box_ops.xyxy_to_cxcywh(query_boxes.astype(jnp.float32)), 0.0, 1.0)
      if encoding is not None:  # The learned queries' rows are known: only the given run.
        anchors, n = given, 0
      else:
        anchors = jnp.concatenate([anchors, given], axis=1)
        rows = jnp.arange(anchors.shape[1])
        self_attn_mask = (rows[None, :] < n) | (rows[:, None] == rows[None, :])
    query_pos = self.anchor_pos(position_encoding.sine_embedding(anchors, d // 2))
    # (cy, cx) order and d/2 features each, to match the tokens' (y, x) encodings.
    ref_sine = position_encoding.sine_embedding(anchors[..., 1::-1], d // 2)
    if self.box_content is None:
      tgt = jnp.zeros((b, anchors.shape[1], d), jnp.float32 if memory is None else memory.dtype)
    else:
      if encoding is not None:
        memory, image_valid_hw = encoding["memory"], encoding["image_valid_hw"]
        batch_token_hw = encoding["token_hw"]
      elif image_valid_hw is None:
        raise ValueError("box_content_grid samples the image tokens: pass image_valid_hw")
      else:
        batch_token_hw = jnp.broadcast_to(
            jnp.asarray(token_hw or (self.grid, self.grid), jnp.float32), (b, 2))
      tgt = self.box_content(sample_in_boxes(memory, batch_token_hw, image_valid_hw, anchors,
                                             self.box_content_grid))
    predictions, kept = [], {k: [] for k in ENCODING_KEYS}
    for i, layer in enumerate(self.decoder_layers):
      # Conditional spatial query: the reference's embedding scaled by a function of the content.
      scale = 1.0 if i == 0 else self.query_scale(tgt)
      if encoding is None:
        memory_kv, context = layer.memory_keys_values(memory, pos), None
      else:
        memory_kv = (encoding["memory_keys"][:, i], encoding["memory_values"][:, i])
        context = (encoding["context_keys"][:, i], encoding["context_values"][:, i])
      tgt, (self_keys, self_values) = layer(
          tgt, memory_kv, query_pos=query_pos, query_sine_embed=ref_sine * scale,
          memory_mask=mask, self_attn_mask=self_attn_mask, context=context, train=train)
      if encoding is None:
        for key, value in zip(ENCODING_KEYS, (*memory_kv, self_keys[:, :self.num_queries],
                                              self_values[:, :self.num_queries])):
          kept[key].append(value)
      hs = self.decoder_norm(tgt)
      logits = self.score_head(hs)[..., 0]
      extra = {}
      if query_boxes is None:
        cxcywh = jax.nn.sigmoid(self.box_head(hs) + _inverse_sigmoid(anchors))
      elif with_proposals:
        cxcywh = jax.nn.sigmoid(self.box_head(hs[:, :n]) + _inverse_sigmoid(anchors[:, :n]))
        logits, extra = logits[:, :n], {"given_logits": logits[:, n:]}
      else:  # Given boxes are scored, not moved.
        logits, cxcywh = logits[:, n:], anchors[:, n:]
      predictions.append({
          "logits": logits,
          "boxes": jnp.clip(box_ops.cxcywh_to_xyxy(cxcywh), 0.0, 1.0),
          "boxes_cxcywh": cxcywh,
          **extra,
      })
    if encoding is None:
      encoding = {"memory_mask": mask, **{k: jnp.stack(v, axis=1) for k, v in kept.items()}}
      if self.box_content is not None:
        encoding.update(memory=memory, image_valid_hw=image_valid_hw, token_hw=batch_token_hw)
    return predictions, encoding

  def __call__(self, images: jax.Array | None, *, image_valid_hw: jax.Array | None = None,
               reference_tokens: jax.Array | None = None, query_boxes: jax.Array | None = None,
               train: bool = False, features: Mapping[str, jax.Array] | None = None,
               encoding: Mapping[str, jax.Array] | None = None, with_proposals: bool = False
               ) -> dict[str, Any]:
    """Predicts (or scores) crops.

    Args:
      images: [B, S, S, 3] float32 in [0, 1], the image at the canvas's top-left.
      image_valid_hw: [B, 2] (h, w) of the image content as a fraction of S; None = all image.
      reference_tokens: [B, K, T, C_ref] (any float dtype) tokens of the K retrieved photos,
        T = tokens_grid ** 2, C_ref = backbone stride-32 channels; None (or K = 0) = no fusion.
      query_boxes: optional [B, Q, 4] normalised xyxy boxes to score instead of proposing.
      train: dropout on, and backbone BN batch statistics unless freeze_backbone_bn.
      features: precomputed `backbone_features(images)` (a feature cache), or with the input
        of the backbone's last blocks (`efficientnet_lite.tail_input_name`) in place of
        "stride32"; then `images` may be None.
      encoding: the "encoding" output of an earlier call on the same photos, with
        `query_boxes`: only the given boxes' decoder rows run (`images`, `image_valid_hw`,
        `features` and `reference_tokens` unused): inference that scores candidate boxes
        after decoding the proposals.
      with_proposals: with `query_boxes`, return the proposals and the given boxes' logits
        ("given_logits" [B, Q]) from one pass (training's ranking loss).

    Returns:
      "logits" [B, N] (sigmoid -> score), "boxes" [B, N, 4] normalised xyxy clipped to [0, 1]
      (the given boxes when scoring), "boxes_cxcywh" [B, N, 4] the unclipped (cx, cy, w, h)
      that the losses use, and "aux": a list with the same dict for each earlier decoder layer.
      N = num_queries, or Q when scoring given boxes. "encoding": what a later call's given
      boxes read from these photos (see `decode`), for its `encoding`.
    """
    if encoding is None:
      if image_valid_hw is None:
        batch = images.shape[0] if features is None else next(iter(features.values())).shape[0]
        image_valid_hw = jnp.ones((batch, 2), jnp.float32)
      image_valid_hw = image_valid_hw.astype(jnp.float32)
      x, pos, mask, token_hw = self._encode(images, image_valid_hw, train=train,
                                            features=features)
      memory = self.fuse(x, pos, mask, reference_tokens, train=train)
    else:
      memory = pos = token_hw = None
      mask = encoding["memory_mask"]
    predictions, encoding = self.decode(memory, pos, mask, query_boxes, train=train,
                                        with_proposals=with_proposals, encoding=encoding,
                                        image_valid_hw=image_valid_hw, token_hw=token_hw)
    return {**predictions[-1], "aux": predictions[:-1], "encoding": encoding}


def sample_in_boxes(tokens: jax.Array, token_hw: jax.Array, image_valid_hw: jax.Array,
                    boxes: jax.Array, points: int) -> jax.Array:
  """Tokens sampled bilinearly on a points x points grid inside each box, concatenated.

  Args:
    tokens: [B, H * W, D], an H x W token grid over the padded canvas (row-major).
    token_hw: [B, 2] (H, W), as floats (they may be traced: an encoding carries them).
    image_valid_hw: [B, 2] the image's (h, w) as a fraction of the canvas.
    boxes: [B, Q, 4] (cx, cy, w, h) in image coordinates (1.0 = the image's edge).
    points: samples per side; each sits at the centre of its cell of the box.

  Returns:
    [B, Q, points * points * D], the samples in row-major order.
  """
  b, q, _ = boxes.shape
  d = tokens.shape[-1]
  steps = (jnp.arange(points, dtype=jnp.float32) + 0.5) / points - 0.5  # Cell centres, [-.5, .5).
  cx, cy, w, h = (boxes[..., i:i + 1] for i in range(4))
  rows, cols = token_hw[:, None, 0:1], token_hw[:, None, 1:2]  # [B, 1, 1]
  xs = (cx + steps * w) * image_valid_hw[:, None, 1:2]  # [B, Q, points], canvas fraction.
  ys = (cy + steps * h) * image_valid_hw[:, None, 0:1]
  # Token centres sit at (i + 0.5) / cols: a continuous token index, clamped to the tokens that
  # cover some of the image (padding's tokens are masked everywhere else too).
  last_col = jnp.ceil(image_valid_hw[:, None, 1:2] * cols - 1e-4) - 1.0
  last_row = jnp.ceil(image_valid_hw[:, None, 0:1] * rows - 1e-4) - 1.0
  xs = jnp.clip(xs * cols - 0.5, 0.0, last_col)
  ys = jnp.clip(ys * rows - 0.5, 0.0, last_row)
  x = jnp.broadcast_to(xs[:, :, None, :], (b, q, points, points)).reshape(b, -1)
  y = jnp.broadcast_to(ys[:, :, :, None], (b, q, points, points)).reshape(b, -1)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  x1, y1 = jnp.minimum(x0 + 1, jnp.ceil(x)), jnp.minimum(y0 + 1, jnp.ceil(y))
  ax, ay = (x - x0)[..., None], (y - y0)[..., None]
  width = token_hw[:, 1:2]  # [B, 1]

  def at(yy, xx):
    index = (yy * width + xx).astype(jnp.int32)[..., None]
    return jnp.take_along_axis(tokens, index, axis=1)

  sampled = ((1 - ay) * ((1 - ax) * at(y0, x0) + ax * at(y0, x1))
             + ay * ((1 - ax) * at(y1, x0) + ax * at(y1, x1)))
  return sampled.reshape(b, q, points * points * d)


def _mixed(rngs: nnx.Rngs, drop_rngs: nnx.Rngs) -> nnx.Rngs:
  """An Rngs whose "params" come from `rngs` and "dropout" from the "dropout"-tagged stream."""
  return nnx.Rngs(params=rngs.params(), dropout=drop_rngs.dropout())


# ----------------------------------------------------------------------------------- statistics
def param_count(model: nnx.Module) -> int:
  """Number of trainable parameters (nnx.Param leaves)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def flops_per_image(model: ProCrop, *, num_references: int | None = None,
                    num_query_boxes: int | None = None,
                    canvas_hw: tuple[int, int] | None = None,
                    from_encoding: bool = False) -> float:
  """XLA's FLOP count of one inference forward pass on a single image.

  num_references defaults to the model's K; num_query_boxes scores that many given boxes instead
  of proposing (with `from_encoding`, from the encoding of an earlier pass: their decoder rows
  alone); canvas_hw is the canvas's (height, width), by default model.image_size square.
  """
  k = model.num_references if num_references is None else num_references
  h, w = canvas_hw or (model.image_size, model.image_size)
  graphdef, state = nnx.split(model)
  c_ref = model.backbone.feature_channels["stride32"]

  def forward(state, images, valid, refs, boxes):
    return nnx.merge(graphdef, state)(images, image_valid_hw=valid, reference_tokens=refs,
                                      query_boxes=boxes)

  args = (jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32),
          jax.ShapeDtypeStruct((1, 2), jnp.float32),
          jax.ShapeDtypeStruct((1, k, model.tokens_grid ** 2, c_ref), jnp.float32) if k else None,
          jax.ShapeDtypeStruct((1, num_query_boxes, 4), jnp.float32) if num_query_boxes else None)
  if from_encoding:
    if not num_query_boxes:
      raise ValueError("from_encoding counts the scoring of num_query_boxes given boxes")
    # The shapes of the encoding the proposals' pass returns (not counted).
    encoding = jax.eval_shape(forward, state, *args[:3], None)["encoding"]
    decode = lambda state, encoding, valid, boxes: nnx.merge(graphdef, state)(
        None, image_valid_hw=valid, encoding=encoding, query_boxes=boxes)
    lowered = jax.jit(decode).lower(state, encoding, args[1], args[3])
  else:
    lowered = jax.jit(forward).lower(state, *args)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX returns one dict per computation.
    cost = cost[0]
  return float(cost["flops"])
