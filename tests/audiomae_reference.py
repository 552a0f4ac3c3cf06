"""A PyTorch reference of AudioMAE's pretraining model, for the tests of continued
pretraining from an imported AudioMAE checkpoint.

It is OUR TRANSCRIPTION of facebookresearch/AudioMAE models_mae.py (MaskedAutoencoderViT
with audio_exp=True, use_custom_patch=False, decoder_mode=1, norm_pix_loss=True: the
released pretraining's settings, main_pretrain.py and submit_pretrain_audioset2M.sh),
built on timm 1.0.31 modules, not AudioMAE's code: AudioMAE's file needs timm 0.3.2 and
its patched timm swin_transformer.py, which do not install beside the pinned torch.
  encoder   timm's VisionTransformer (class token, qkv bias, LayerNorm eps 1e-6): its
            patch_embed, cls_token, pos_embed, blocks and norm are AudioMAE's modules and
            keys; forward_encoder below follows models_mae.forward_encoder, except that the
            mask comes in (ids_shuffle) instead of from torch.rand.
  decoder   decoder_embed, mask_token, decoder_pos_embed (with the class token's row),
            decoder_norm, decoder_pred as models_mae builds them; decoder_blocks from
            timm's SwinTransformerV2CrBlock, the block AudioMAE's timm_patch copies, with
            two adjustments to make it AudioMAE's: timm 1.x recomputes any non-zero shift
            as window / 2 on both axes (AudioMAE's copy keeps (2, 0): set back here), and
            it holds log(1 / tau) as `logit_scale` where AudioMAE holds `tau` (the state
            dict is written with tau = exp(-logit_scale): the same attention, since
            min(exp(s), 100) = 1 / max(exp(-s), 0.01)). timm 1.x's block takes (B, H, W, C)
            tokens where AudioMAE's took (B, H * W, C): reshaped around the blocks.
  loss      forward_loss: AudioMAE's patchify ('nchpwq->nhwpqc' over the (1024 frames,
            128 mels) input: time-major tokens, patch values (frame, mel)), norm-pix
            targets with torch's (unbiased) var, mean squared error over masked patches.
Run in eval mode (the Swin block's position-bias MLP has dropout in training).
"""
from functools import partial

import numpy as np
import timm
import torch
from timm.models.swin_transformer_v2_cr import SwinTransformerV2CrBlock


class AudioMAEReference(torch.nn.Module):
  def __init__(self, frames: int = 1024, mels: int = 128, patch: int = 16,
               embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
               decoder_embed_dim: int = 512, decoder_depth: int = 16,
               decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
               decoder_mlp_ratio: float | None = None,
               window: tuple[int, int] = (4, 4), shift: tuple[int, int] = (2, 0),
               seed: int = 0):
    super().__init__()
    torch.manual_seed(seed)  # timm's and torch's initialisers draw from the global generator
    norm = partial(torch.nn.LayerNorm, eps=1e-6)
    self.patch = patch
    self.grid = (frames // patch, mels // patch)  # (time, frequency): AudioMAE's feat_size
    n = self.grid[0] * self.grid[1]
    self.encoder = timm.models.vision_transformer.VisionTransformer(
        img_size=(frames, mels), patch_size=patch, in_chans=1, embed_dim=embed_dim,
        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
        class_token=True, global_pool="token", num_classes=0, norm_layer=norm)
    self.decoder_embed = torch.nn.Linear(embed_dim, decoder_embed_dim)
    self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
    self.decoder_pos_embed = torch.nn.Parameter(torch.zeros(1, n + 1, decoder_embed_dim))
    blocks = []
    for i in range(decoder_depth):
      block_shift = shift if i % 2 else (0, 0)
      block = SwinTransformerV2CrBlock(
          dim=decoder_embed_dim, num_heads=decoder_num_heads, feat_size=self.grid,
          window_size=window, shift_size=block_shift,
          mlp_ratio=decoder_mlp_ratio or mlp_ratio, init_values=None, norm_layer=norm)
      block.shift_size = block_shift  # AudioMAE's shift, not timm 1.x's window / 2
      block._init_buffers()           # its attention mask for that shift
      blocks.append(block)
    self.decoder_blocks = torch.nn.ModuleList(blocks)
    self.decoder_norm = norm(decoder_embed_dim)
    self.decoder_pred = torch.nn.Linear(decoder_embed_dim, patch * patch)

  def perturbed(self, seed: int = 1) -> "AudioMAEReference":
    """Every 1-D parameter (biases, norms, the Swin blocks' logit scales), the class and
    mask tokens and both position tables moved off their initial values, so that a
    mis-mapped one shows; eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
      for name, p in self.named_parameters():
        if p.ndim == 1 or name.endswith(("cls_token", "pos_embed", "mask_token")):
          p.add_(0.1 * torch.randn_like(p))
    return self.eval()

  def audiomae_state_dict(self) -> dict:
    """The state dict in AudioMAE's key layout (models_mae.MaskedAutoencoderViT)."""
    out = dict(self.encoder.state_dict())
    for key, value in self.state_dict().items():
      if key.startswith("encoder."):
        continue
      if key.endswith("attn.logit_scale"):
        out[key.replace("logit_scale", "tau")] = torch.exp(-value)
      else:
        out[key] = value
    return {k: v.detach().clone() for k, v in out.items()}

  # ---- models_mae.py, transcribed ------------------------------------------------------

  def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
    p = self.patch
    h, w = imgs.shape[2] // p, imgs.shape[3] // p
    x = imgs.reshape(imgs.shape[0], 1, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(imgs.shape[0], h * w, p * p)

  def forward_encoder(self, imgs: torch.Tensor, ids_shuffle: torch.Tensor, len_keep: int):
    enc = self.encoder
    x = enc.patch_embed(imgs)
    x = x + enc.pos_embed[:, 1:, :]
    ids_keep = ids_shuffle[:, :len_keep]
    x = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat((cls, x), dim=1)
    for blk in enc.blocks:
      x = blk(x)
    return enc.norm(x)

  def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    x = self.decoder_embed(x)
    mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    x = x + self.decoder_pos_embed
    b, _, d = x.shape
    x = x[:, 1:, :]  # decoder_mode != 0: the class token is dropped before the blocks
    x = x.reshape(b, *self.grid, d)  # timm 1.x's block: (B, H, W, C)
    for blk in self.decoder_blocks:
      x = blk(x)
    x = self.decoder_norm(x.reshape(b, -1, d))
    return self.decoder_pred(x)

  def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
    target = self.patchify(imgs)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.e-6) ** .5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()

  def forward(self, imgs: torch.Tensor, ids_shuffle: torch.Tensor, len_keep: int):
    """(loss, pred, mask) of models_mae.forward with the mask random_masking would draw
    from noise whose argsort is `ids_shuffle` (kept tokens first)."""
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(ids_shuffle.shape)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    latent = self.forward_encoder(imgs, ids_shuffle, len_keep)
    pred = self.forward_decoder(latent, ids_restore)
    return self.forward_loss(imgs, pred, mask), pred, mask


# ---- our masks and tensors in AudioMAE's layout --------------------------------------------

def reference_token(ours: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """Our token index (frequency-major: (f, t) = divmod(n, T)) -> AudioMAE's (time-major:
  t * F + f) on our (F, T) grid."""
  f, t = grid
  return (ours % t) * f + ours // t


def ids_shuffle_of(mask_set, grid: tuple[int, int]) -> tuple[torch.Tensor, int]:
  """(ids_shuffle, len_keep) of our one-set unstructured MaskSet: its visible tokens
  first, then its masked ones, in AudioMAE's token order."""
  assert np.asarray(mask_set.context_valid).all() and np.asarray(mask_set.target_valid).all()
  context = reference_token(np.asarray(mask_set.context_idx[:, 0]), grid)
  target = reference_token(np.asarray(mask_set.target_idx[:, 0, 0]), grid)
  ids = np.concatenate([context, target], axis=1)
  return torch.from_numpy(ids.astype(np.int64)), context.shape[1]


def reference_input(mel: np.ndarray) -> torch.Tensor:
  """Our (B, mels, frames) batch as AudioMAE's (B, 1, frames, mels) input."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(mel).transpose(0, 2, 1)))[:, None]


def predictions_in_our_layout(pred: torch.Tensor, mask_set, grid: tuple[int, int],
                              patch_shape: tuple[int, int]) -> np.ndarray:
  """The reference's (B, L, frame x mel) predictions at our target slots, as ours:
  (B, Nt, mel x frame)."""
  target = reference_token(np.asarray(mask_set.target_idx[:, 0, 0]), grid)
  at = np.take_along_axis(pred.detach().numpy(), target[..., None], axis=1)
  pf, pt = patch_shape
  return at.reshape(*at.shape[:2], pt, pf).swapaxes(-1, -2).reshape(*at.shape[:2], pf * pt)
