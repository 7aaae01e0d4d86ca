"""Faster SAM stages for :class:`~sgdfuse_ros.priors.sam.SamPrior`, same results as segment_anything's own code.

Two pieces, both reusing the stock modules' weights (nothing copied, nothing in the segment_anything
package patched):

* :func:`use_sdpa` switches the attention blocks of an ``ImageEncoderViT`` to
  ``torch.nn.functional.scaled_dot_product_attention``. The decomposed relative-position bias of
  ``segment_anything.modeling.image_encoder.add_decomposed_rel_pos`` becomes an additive float
  ``attn_mask`` (no mask for blocks without relative positions), so the fused kernels
  (memory-efficient attention on CUDA, the flash-style CPU kernel) replace the explicit
  ``[B*heads, N, N]`` softmax. Done per block *instance* (``attn.forward`` is set on the object), so the
  state dict is unchanged and :func:`use_sdpa` with ``enabled=False`` restores the stock forward.
* :func:`decode_shared` is ``MaskDecoder.forward`` for B images x P prompts in ONE call, with the
  image-side work that is identical for every prompt of an image done once per image. The stock decoder
  ``repeat_interleave``s the image embedding (+ the dense "no mask" embedding) and the positional
  encoding once per prompt; its first ``TwoWayAttentionBlock`` then projects those identical copies in
  the token->image attention (keys = image + PE, values = image) and in the image->token attention
  (queries = image + PE). Here those projections are computed on ``[B, HW, C]`` and shared by the P
  prompts of each image; the token side before the first cross-attention (prompt self-attention) is
  computed once for the P prompts and shared by the B images. From the first block's image->token
  attention on, the image tokens differ per prompt and the stock layers run unchanged. The arithmetic of
  every output element is the stock one (same operations in the same order), so the results equal the
  stock decoder's up to float rounding of differently shaped matrix products (tested with
  ``torch.testing.assert_close`` at fp32 defaults).
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder
from segment_anything.modeling.image_encoder import Attention as EncoderAttention
from segment_anything.modeling.image_encoder import get_rel_pos
from torch import Tensor

__all__ = ["decode_shared", "rel_pos_bias", "sdpa_attention_forward", "use_sdpa"]


# --------------------------------------------------------------------------------------------
# Image encoder: SDPA attention
# --------------------------------------------------------------------------------------------


def rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, q_size: tuple[int, int],
                 k_size: tuple[int, int]) -> Tensor:
    """The decomposed relative-position term of ``add_decomposed_rel_pos``, as an additive attention bias.

    Args:
        q: [B, heads, q_h*q_w, C] queries (unscaled, as in segment_anything).
        rel_pos_h, rel_pos_w: [Lh, C], [Lw, C] relative-position tables.
        q_size, k_size: (h, w) token grids of queries and keys.
    Returns:
        [B, heads, q_h*q_w, k_h*k_w] bias ``rel_h[..., k_h, None] + rel_w[..., None, k_w]``, in ``q``'s dtype.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    rh = get_rel_pos(q_h, k_h, rel_pos_h)
    rw = get_rel_pos(q_w, k_w, rel_pos_w)
    b, heads, _, dim = q.shape
    r_q = q.reshape(b * heads, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return bias.reshape(b, heads, q_h * q_w, k_h * k_w)


def sdpa_attention_forward(self: EncoderAttention, x: Tensor) -> Tensor:
    """``segment_anything`` encoder ``Attention.forward`` computed with ``scaled_dot_product_attention``.

    Args:
        self: the stock block (its ``qkv``, ``proj``, ``num_heads``, ``scale``, rel-pos tables are used).
        x: [B, H, W, C] tokens (a window or the whole grid).
    Returns:
        [B, H, W, C].
    """
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each [B, heads, HW, C/heads]
    bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w)) if self.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def use_sdpa(encoder: ImageEncoderViT, enabled: bool = True) -> int:
    """Make every attention block of ``encoder`` use :func:`sdpa_attention_forward` (or the stock forward again).

    Sets (or, with ``enabled=False``, deletes) ``forward`` on each block's ``attn`` instance; the class,
    the parameters and the state dict are untouched. Returns the number of blocks changed.
    """
    count = 0
    for module in encoder.modules():
        if isinstance(module, EncoderAttention):
            if enabled:
                module.forward = types.MethodType(sdpa_attention_forward, module)
            else:
                module.__dict__.pop("forward", None)
            count += 1
    return count


# --------------------------------------------------------------------------------------------
# Mask decoder: B images x P prompts per call, image-side work once per image
# --------------------------------------------------------------------------------------------


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """[..., N, C] -> [..., heads, N, C/heads] (stock ``_separate_heads`` for any leading dims)."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _merge_heads(x: Tensor) -> Tensor:
    """[..., heads, N, d] -> [..., N, heads*d] (stock ``_recombine_heads``)."""
    return x.transpose(-3, -2).flatten(-2)


def _softmax_attention(logits: Tensor, scale_dim: int) -> Tensor:
    """Stock decoder attention weights: ``softmax(logits / sqrt(d))`` over the last dim."""
    return torch.softmax(logits / math.sqrt(scale_dim), dim=-1)


def _first_block(layer: torch.nn.Module, tokens: Tensor, image: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
    """The first ``TwoWayAttentionBlock`` with the per-image work shared by the prompts.

    Args:
        tokens: [P, T, C] prompt tokens (output tokens + point embeddings), also the query PE.
        image: [B, HW, C] image embedding + dense prompt embedding, flattened.
        image_pe: [1, HW, C] positional encoding.
    Returns:
        (queries [B, P, T, C], keys [B, P, HW, C]) as the stock block returns them for each image and prompt.
    """
    b = image.shape[0]
    p, t, _ = tokens.shape
    # 1. prompt self-attention: independent of the image.
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=tokens, k=tokens, v=tokens)
    else:
        q = tokens + tokens
        queries = tokens + layer.self_attn(q=q, k=q, v=tokens)
    queries = layer.norm1(queries)  # [P, T, C]

    # 2. tokens -> image: keys/values projected once per image; the P*T queries of an image attend together.
    attn = layer.cross_attn_token_to_image
    heads = attn.num_heads
    keys_in = image + image_pe  # [B, HW, C]
    k = _split_heads(attn.k_proj(keys_in), heads)  # [B, h, HW, d]
    v = _split_heads(attn.v_proj(image), heads)  # [B, h, HW, d]
    q = _split_heads(attn.q_proj(queries + tokens), heads)  # [P, h, T, d]
    d = q.shape[-1]
    q = q.transpose(0, 1).reshape(1, heads, p * t, d)  # [1, h, P*T, d]
    out = _softmax_attention(q @ k.transpose(-2, -1), d) @ v  # [B, h, P*T, d]
    out = out.view(b, heads, p, t, d).permute(0, 2, 1, 3, 4)  # [B, P, h, T, d]
    queries = layer.norm2(queries + attn.out_proj(_merge_heads(out)))  # [B, P, T, C]

    # 3. MLP on the tokens (now per image and prompt).
    queries = layer.norm3(queries + layer.mlp(queries))

    # 4. image -> tokens: image queries projected once per image; keys/values per prompt.
    attn = layer.cross_attn_image_to_token
    heads = attn.num_heads
    qi = _split_heads(attn.q_proj(keys_in), heads)  # [B, h, HW, d]
    kt = _split_heads(attn.k_proj(queries + tokens), heads)  # [B, P, h, T, d]
    vt = _split_heads(attn.v_proj(queries), heads)  # [B, P, h, T, d]
    d = qi.shape[-1]
    # logits of all prompts of an image in one product: [B, h, HW, d] @ [B, h, d, P*T] -> [B, h, HW, P, T]
    kt_all = kt.permute(0, 2, 4, 1, 3).reshape(b, heads, d, p * t)
    weights = _softmax_attention((qi @ kt_all).unflatten(-1, (p, t)), d)
    out = weights.permute(0, 3, 1, 2, 4) @ vt  # [B, P, h, HW, T] @ [B, P, h, T, d] -> [B, P, h, HW, d]
    keys = layer.norm4(image[:, None] + attn.out_proj(_merge_heads(out)))  # [B, P, HW, C]
    return queries, keys


def decode_shared(decoder: MaskDecoder, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                  dense_prompt_embedding: Tensor, multimask_output: bool = True) -> tuple[Tensor, Tensor]:
    """``decoder(...)`` for every image x every prompt in one call, image-side work shared (module docstring).

    Equals, for each image ``b``, the stock ``decoder(image_embeddings[b:b+1], image_pe, sparse_prompt_embeddings,
    dense_prompt_embedding.expand(P, -1, -1, -1), multimask_output)`` (same prompts for every image, one dense
    embedding for all prompts: point prompts without a mask input).

    Args:
        decoder: a segment_anything ``MaskDecoder`` (its weights are used as they are).
        image_embeddings: [B, C, h, w] encoder outputs.
        image_pe: [1, C, h, w] dense positional encoding (``PromptEncoder.get_dense_pe()``).
        sparse_prompt_embeddings: [P, S, C] point embeddings, shared by all images.
        dense_prompt_embedding: [1, C, h, w] dense prompt embedding shared by all prompts (``no_mask_embed``).
        multimask_output: as the stock decoder (3 masks, or the single-mask output).
    Returns:
        (logits [B*P, K, 4h, 4w], iou [B*P, K]), image-major (row ``b * P + p``), K = 3 or 1.
    """
    if dense_prompt_embedding.shape[0] != 1:
        raise ValueError(f"dense_prompt_embedding must be [1, C, h, w], got {tuple(dense_prompt_embedding.shape)}")
    tf = decoder.transformer
    b, c, h, w = image_embeddings.shape
    p = sparse_prompt_embeddings.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(p, -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)  # [P, T, C]

    image = (image_embeddings + dense_prompt_embedding).flatten(2).permute(0, 2, 1)  # [B, HW, C]
    pe = image_pe.flatten(2).permute(0, 2, 1)  # [1, HW, C]
    queries, keys = _first_block(tf.layers[0], tokens, image, pe)
    queries, keys = queries.flatten(0, 1), keys.flatten(0, 1)  # [B*P, T, C], [B*P, HW, C]
    query_pe = tokens.repeat(b, 1, 1)  # [B*P, T, C], image-major like the rows
    for layer in tf.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=query_pe, key_pe=pe)
    attn_out = tf.final_attn_token_to_image(q=queries + query_pe, k=keys + pe, v=keys)
    hs = tf.norm_final_attn(queries + attn_out)

    # Stock MaskDecoder.predict_masks from here on.
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1:(1 + decoder.num_mask_tokens), :]
    src = keys.transpose(1, 2).view(b * p, c, h, w)
    upscaled = decoder.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    n, cu, hu, wu = upscaled.shape
    masks = (hyper_in @ upscaled.view(n, cu, hu * wu)).view(n, -1, hu, wu)
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, mask_slice], iou_pred[:, mask_slice]
