"""Transformer blocks of the crop head: a DETR encoder layer and a Conditional-DETR decoder layer.

Both are post-norm, as in DETR and Conditional DETR (Meng et al., ICCV 2021). Attention masks are
key-padding masks: True for keys that may be attended to.
"""

from flax import nnx
import jax
import jax.numpy as jnp


def _split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def _concat_heads(a: jax.Array, b: jax.Array, num_heads: int) -> jax.Array:
  """[B, L, Da] and [B, L, Db] -> [B, L, Da + Db], head by head: each head's a, then its b."""
  return jnp.concatenate([_split_heads(a, num_heads), _split_heads(b, num_heads)],
                         axis=-1).reshape(*a.shape[:-1], -1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, num_heads: int,
              key_mask: jax.Array | None = None, attn_mask: jax.Array | None = None,
              dropout: nnx.Dropout | None = None, train: bool = False) -> jax.Array:
  """Multi-head scaled dot-product attention on already projected inputs.

  q [B, Lq, Dqk], k [B, Lk, Dqk] and v [B, Lk, Dv] are split into `num_heads` heads (the query/key
  and value widths may differ, as in Conditional DETR's cross-attention). key_mask: [B, Lk];
  attn_mask: [Lq, Lk] (shared by the batch); True = may attend.
  Returns [B, Lq, Dv] (heads concatenated, before the output projection).
  """
  q, k, v = (_split_heads(t, num_heads) for t in (q, k, v))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
  if attn_mask is not None:
    logits = jnp.where(attn_mask, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout is not None:
    weights = dropout(weights, deterministic=not train)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
  return out.reshape(*out.shape[:2], -1)


def attention_to_context_and_self(q: jax.Array, k: jax.Array, v: jax.Array, k_context: jax.Array,
                                  v_context: jax.Array, *, num_heads: int) -> jax.Array:
  """`attention` where query i attends to the C context keys and to its own key only.

  q, k, v [B, L, D]; k_context, v_context [B, C, D]. The same result as `attention` over
  [context; queries] with a mask that lets row i see the context and itself, without the
  L x L logits of that mask.
  """
  q, k, v, k_context, v_context = (_split_heads(t, num_heads)
                                   for t in (q, k, v, k_context, v_context))
  scale = jnp.sqrt(q.shape[-1]).astype(q.dtype)
  logits_context = jnp.einsum("bqhd,bkhd->bhqk", q, k_context) / scale
  logits_self = jnp.einsum("bqhd,bqhd->bhq", q, k)[..., None] / scale
  weights = jax.nn.softmax(jnp.concatenate([logits_context, logits_self], axis=-1), axis=-1)
  out = (jnp.einsum("bhqk,bkhd->bqhd", weights[..., :-1], v_context)
         + jnp.einsum("bhq,bqhd->bqhd", weights[..., -1], v))
  return out.reshape(*out.shape[:2], -1)


class MLP(nnx.Module):
  """Linear layers with ReLU between them (DETR's box-head MLP)."""

  def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, *,
               rngs: nnx.Rngs, zero_last: bool = False):
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers = [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-2], dims[1:-1])]
    # zero_last starts the head at a chosen output (e.g. "no offset from the anchor box").
    last_init = nnx.initializers.zeros if zero_last else nnx.initializers.lecun_normal()
    layers.append(nnx.Linear(dims[-2], dims[-1], kernel_init=last_init, rngs=rngs))
    self.layers = nnx.List(layers)

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x


class FeedForward(nnx.Module):
  """Linear -> ReLU -> Dropout -> Linear."""

  def __init__(self, d_model: int, mlp_dim: int, dropout: float, *, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(d_model, mlp_dim, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.linear2 = nnx.Linear(mlp_dim, d_model, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.linear2(self.dropout(jax.nn.relu(self.linear1(x)), deterministic=not train))


class MultiHeadAttention(nnx.Module):
  """Standard attention with separate q/k/v/out projections."""

  def __init__(self, d_model: int, num_heads: int, dropout: float, *, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.q_proj = nnx.Linear(d_model, d_model, rngs=rngs)
    self.k_proj = nnx.Linear(d_model, d_model, rngs=rngs)
    self.v_proj = nnx.Linear(d_model, d_model, rngs=rngs)
    self.out_proj = nnx.Linear(d_model, d_model, rngs=rngs)
    self.attn_dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *,
               key_mask: jax.Array | None = None, train: bool = False) -> jax.Array:
    out = attention(self.q_proj(q), self.k_proj(k), self.v_proj(v), num_heads=self.num_heads,
                    key_mask=key_mask, dropout=self.attn_dropout, train=train)
    return self.out_proj(out)


class EncoderLayer(nnx.Module):
  """DETR encoder layer: self-attention with the position added to queries and keys, then FFN."""

  def __init__(self, d_model: int, num_heads: int, mlp_dim: int, dropout: float, *,
               rngs: nnx.Rngs):
    self.self_attn = MultiHeadAttention(d_model, num_heads, dropout, rngs=rngs)
    self.dropout1 = nnx.Dropout(dropout, rngs=rngs)
    self.norm1 = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
    self.ffn = FeedForward(d_model, mlp_dim, dropout, rngs=rngs)
    self.dropout2 = nnx.Dropout(dropout, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: jax.Array, pos: jax.Array, mask: jax.Array, *,
               train: bool = False) -> jax.Array:
    qk = x + pos
    attn = self.self_attn(qk, qk, x, key_mask=mask, train=train)
    x = self.norm1(x + self.dropout1(attn, deterministic=not train))
    x = self.norm2(x + self.dropout2(self.ffn(x, train=train), deterministic=not train))
    return x


class CrossAttentionBlock(nnx.Module):
  """x attends to a second token set: x = LayerNorm(x + Dropout(Attention(x + pos, y, y)))."""

  def __init__(self, d_model: int, num_heads: int, dropout: float, *, rngs: nnx.Rngs):
    self.attn = MultiHeadAttention(d_model, num_heads, dropout, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.norm = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: jax.Array, pos: jax.Array, y: jax.Array, *,
               y_mask: jax.Array | None = None, train: bool = False) -> jax.Array:
    attn = self.attn(x + pos, y, y, key_mask=y_mask, train=train)
    return self.norm(x + self.dropout(attn, deterministic=not train))


class ConditionalDecoderLayer(nnx.Module):
  """Conditional-DETR decoder layer.

  Self-attention over the queries (content + positional query), then cross-attention to the image
  tokens whose query and key are, per head, the concatenation of a content part and a spatial
  part: the spatial query is the projected (scaled) sine embedding of the query's reference
  point, the spatial key the projected sine encoding of the token's position. So the attention
  logit is content.content + spatial.spatial, which lets each query look at its crop's region.
  The first layer also adds the positional query to the content query (Conditional DETR).
  """

  def __init__(self, d_model: int, num_heads: int, mlp_dim: int, dropout: float, *,
               is_first: bool, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.is_first = is_first
    lin = lambda: nnx.Linear(d_model, d_model, rngs=rngs)
    # Self-attention.
    self.sa_qcontent_proj, self.sa_qpos_proj = lin(), lin()
    self.sa_kcontent_proj, self.sa_kpos_proj = lin(), lin()
    self.sa_v_proj, self.sa_out_proj = lin(), lin()
    self.sa_attn_dropout = nnx.Dropout(dropout, rngs=rngs)
    self.dropout1 = nnx.Dropout(dropout, rngs=rngs)
    self.norm1 = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
    # Cross-attention.
    self.ca_qcontent_proj = lin()
    self.ca_qpos_proj = lin() if is_first else None
    self.ca_kcontent_proj, self.ca_kpos_proj = lin(), lin()
    self.ca_v_proj = lin()
    self.ca_qpos_sine_proj = lin()
    self.ca_out_proj = lin()
    self.ca_attn_dropout = nnx.Dropout(dropout, rngs=rngs)
    self.dropout2 = nnx.Dropout(dropout, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
    # Feed-forward.
    self.ffn = FeedForward(d_model, mlp_dim, dropout, rngs=rngs)
    self.dropout3 = nnx.Dropout(dropout, rngs=rngs)
    self.norm3 = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)

  def memory_keys_values(self, memory: jax.Array, memory_pos: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """The cross-attention's keys [B, S, 2D] ([content | spatial] per head) and values [B, S, D]
    of the image tokens memory [B, S, D] at their sine encodings memory_pos [B, S, D]."""
    k = self.ca_kcontent_proj(memory)
    k_pos = self.ca_kpos_proj(memory_pos)
    if self.is_first:
      k = k + k_pos
    return _concat_heads(k, k_pos, self.num_heads), self.ca_v_proj(memory)

  def self_keys_values(self, tgt: jax.Array, query_pos: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """The self-attention's keys and values [B, N, D] of query content tgt at query_pos."""
    return (self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos), self.sa_v_proj(tgt))

  def __call__(self, tgt: jax.Array, memory_keys_values: tuple[jax.Array, jax.Array], *,
               query_pos: jax.Array, query_sine_embed: jax.Array, memory_mask: jax.Array,
               self_attn_mask: jax.Array | None = None,
               context: tuple[jax.Array, jax.Array] | None = None,
               train: bool = False) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One layer.

    Args:
      tgt: [B, N, D] query content.
      memory_keys_values: `memory_keys_values` of the image tokens (computed once per photo,
        so that later passes over the same photo can reuse them).
      memory_mask: [B, S] True for tokens on the image.
      query_pos: [B, N, D] positional queries; query_sine_embed [B, N, D] the (scaled) sine
        embedding of the reference points.
      self_attn_mask: optional [N, N], True where query i may attend to query j.
      context: optional `self_keys_values` (keys, values [B, C, D]) of C other queries that
        each of the N attends to, besides itself (and to no other of the N); the context rows
        are not updated (inference: given boxes beside the learned queries).

    Returns:
      [B, N, D] updated query content, and the N queries' `self_keys_values` at its input.
    """
    h = self.num_heads
    # Self-attention.
    q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
    k, v = self.self_keys_values(tgt, query_pos)
    if context is None:
      sa = attention(q, k, v, num_heads=h, attn_mask=self_attn_mask,
                     dropout=self.sa_attn_dropout, train=train)
    else:
      if train or self_attn_mask is not None:
        raise ValueError("context is for inference, without a self-attention mask")
      sa = attention_to_context_and_self(q, k, v, *context, num_heads=h)
    self_kv = (k, v)
    tgt = self.norm1(tgt + self.dropout1(self.sa_out_proj(sa), deterministic=not train))

    # Cross-attention with [content | spatial] queries and keys per head.
    q = self.ca_qcontent_proj(tgt)
    if self.is_first:
      q = q + self.ca_qpos_proj(query_pos)
    q = _concat_heads(q, self.ca_qpos_sine_proj(query_sine_embed), h)
    ca = attention(q, *memory_keys_values, num_heads=h, key_mask=memory_mask,
                   dropout=self.ca_attn_dropout, train=train)
    tgt = self.norm2(tgt + self.dropout2(self.ca_out_proj(ca), deterministic=not train))

    tgt = self.norm3(tgt + self.dropout3(self.ffn(tgt, train=train), deterministic=not train))
    return tgt, self_kv
