"""The masked-prediction train step of a config in PyTorch, for train_step.py's
comparison: the same passes (step_setup.step_passes), shapes, batch and precision.

Per step: random masks of the config's slot counts (a random permutation of the grid per
clip and mask set, cut into context and target slots), the ViT context encoder on the
gathered context tokens, the predictor (queries or full-grid layout, mask tokens and
sin-cos positions) or MAE decoder, for JEPA the EMA target encoder without gradient on
the target slots ('audio') or the whole grid ('latent') and per-token standardised
targets, the config's distance, AdamW (weight decay on matrices only) after global-norm
clipping, and the EMA update of the target. Attention is torch's
scaled_dot_product_attention. Not modelled (the step then is 'n/a'): local-window
attention, the per-vector smooth L1, Dasheng's input BatchNorm.
"""
import copy
import os

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import step_setup
from jepa_jax.config import shapes
from jepa_jax.models import layers, positions

DISTANCES = ("smooth_l1", "l2")  # the element-wise ones


class Unsupported(Exception):
  """The config uses something this step does not model."""


class Block(nn.Module):
  """Pre-norm block as jepa_jax.models.vit.Block: fused QKV, exact GELU."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.num_heads = num_heads
    self.norm1 = nn.LayerNorm(width, eps=layers.LN_EPS)
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)
    self.norm2 = nn.LayerNorm(width, eps=layers.LN_EPS)
    self.fc1 = nn.Linear(width, mlp_dim)
    self.fc2 = nn.Linear(mlp_dim, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape
    qkv = self.qkv(self.norm1(x)).view(b, t, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head_dim)
    a = F.scaled_dot_product_attention(q, k, v)
    x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
    return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Stack(nn.Module):
  def __init__(self, p: step_setup.Pass):
    super().__init__()
    self.blocks = nn.ModuleList(Block(p.width, p.num_heads, p.mlp_dim) for _ in range(p.depth))
    self.norm = nn.LayerNorm(p.width, eps=layers.LN_EPS)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for block in self.blocks:
      x = block(x)
    return self.norm(x)


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
  """(B, N, C), (B, M) -> (B, M, C)."""
  return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class Encoder(nn.Module):
  def __init__(self, p: step_setup.Pass, patch_dim: int, grid: tuple[int, int]):
    super().__init__()
    self.embed = nn.Linear(patch_dim, p.width)
    self.register_buffer("positions", torch.from_numpy(positions.sincos_2d(p.width, grid)))
    self.stack = Stack(p)

  def forward(self, patches: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return self.stack(self.embed(patches) + self.positions[idx])


class Predictor(nn.Module):
  """Predictor / decoder: context in, mask tokens at the targets (queries) or on every
  position the context does not fill (full grid), outputs at the targets."""

  def __init__(self, p: step_setup.Pass, in_dim: int, out_dim: int, grid: tuple[int, int],
               full_grid: bool):
    super().__init__()
    self.full_grid = full_grid
    self.embed = nn.Linear(in_dim, p.width)
    self.register_buffer("positions", torch.from_numpy(positions.sincos_2d(p.width, grid)))
    self.mask_token = nn.Parameter(0.02 * torch.randn(p.width))
    self.stack = Stack(p)
    self.project = nn.Linear(p.width, out_dim)

  def forward(self, context, context_idx, target_idx):
    x = self.embed(context) + self.positions[context_idx]
    if self.full_grid:
      b, n = x.shape[0], self.positions.shape[0]
      grid = (self.mask_token + self.positions).expand(b, n, -1)
      grid = grid.scatter(1, context_idx[..., None].expand_as(x), x)
      h = gather(self.stack(grid), target_idx)
    else:
      queries = self.mask_token + self.positions[target_idx]
      h = self.stack(torch.cat([x, queries], 1))[:, x.shape[1]:]
    return self.project(h)


def standardize(x: torch.Tensor, eps: float) -> torch.Tensor:
  return F.layer_norm(x, x.shape[-1:], eps=eps)


def check_supported(config: ml_collections.ConfigDict) -> None:
  section = config[step_setup.predictor_section(config)]
  if section.attention != "global":
    raise Unsupported("local-window attention")
  if config.objective == "jepa" and config.jepa.distance not in DISTANCES:
    raise Unsupported(f"distance {config.jepa.distance}")
  if config.objective == "mae" and config.mae.input_norm != "none":
    raise Unsupported(f"input_norm {config.mae.input_norm}")


class TorchStep:
  """One train step of `config` on `batch` random clips, on `device`; `dtype` 'bfloat16'
  runs the passes under autocast."""

  def __init__(self, config: ml_collections.ConfigDict, batch: int, device: str):
    check_supported(config)
    passes = {p.name: p for p in step_setup.step_passes(config)}
    self.config, self.batch, self.device = config, batch, device
    self.jepa = config.objective == "jepa"
    self.grid = shapes.grid(config)
    self.n = self.grid[0] * self.grid[1]
    self.sets, self.nc, self.groups, self.nt = step_setup.mask_shapes(config)
    self.patch_shape = shapes.patch_shape(config)
    patch_dim = self.patch_shape[0] * self.patch_shape[1]
    name = step_setup.predictor_section(config)
    self.full_grid = config[name].layout == "full_grid"
    width = config.model.width
    self.encoder = Encoder(passes["context"], patch_dim, self.grid).to(device)
    self.predictor = Predictor(passes[name], width, width if self.jepa else patch_dim, self.grid,
                               self.full_grid).to(device)
    trained = list(self.encoder.parameters()) + list(self.predictor.parameters())
    o = config.optim
    self.params = trained
    self.optimizer = torch.optim.AdamW(
        [{"params": [p for p in trained if p.ndim >= 2]},
         {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}],
        lr=o.base_lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay,
        foreach=True)
    if self.jepa:
      self.target = copy.deepcopy(self.encoder).requires_grad_(False)
      self.tau = config.ema.tau_start
    mels, frames = shapes.input_shape(config)
    self.mel = torch.from_numpy(np.random.default_rng(0).normal(
        size=(batch, mels, frames)).astype(np.float32)).to(device)
    self.autocast = torch.autocast(device, torch.bfloat16,
                                   enabled=config.model.dtype == "bfloat16")

  def patchify(self) -> torch.Tensor:
    b, f, t = self.mel.shape
    pf, pt = self.patch_shape
    x = self.mel.reshape(b, f // pf, pf, t // pt, pt).permute(0, 1, 3, 2, 4)
    return x.reshape(b, self.n, pf * pt)

  def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
    """(B*K, Nc) context and (B*K, M*Nt) target token indices: consecutive runs of a
    random permutation of the grid (wrapping where block masks' slots outnumber it)."""
    order = torch.rand(self.batch * self.sets, self.n, device=self.device).argsort(1)
    slots = torch.arange(self.nc + self.groups * self.nt, device=self.device) % self.n
    idx = order[:, slots]
    return idx[:, :self.nc], idx[:, self.nc:]

  def loss(self) -> torch.Tensor:
    b, k, m = self.batch, self.sets, self.groups
    tokens = self.patchify()
    context_idx, target_idx = self.masks()
    clip_tokens = tokens.repeat_interleave(k, 0)
    with self.autocast:
      context = self.encoder(gather(clip_tokens, context_idx), context_idx)
      if self.full_grid:
        pred = self.predictor(context, context_idx, target_idx)
      else:  # each target group from the same context
        pred = self.predictor(context.repeat_interleave(m, 0), context_idx.repeat_interleave(m, 0),
                              target_idx.reshape(b * k * m, self.nt))
      pred = pred.reshape(b, k * m * self.nt, -1).float()
      target_idx = target_idx.reshape(b, k * m * self.nt)
      if not self.jepa:
        goal = standardize(gather(tokens, target_idx), self.config.mae.norm_pix_eps)
        return F.mse_loss(pred, goal)
      with torch.no_grad():
        if self.config.jepa.target_domain == "audio":
          goal = self.target(gather(tokens, target_idx), target_idx)
        else:
          every = torch.arange(self.n, device=self.device).expand(b, -1)
          goal = gather(self.target(tokens, every), target_idx)
        goal = goal.float()
    j = self.config.jepa
    if j.standardize_targets:
      goal = standardize(goal, j.standardize_eps)
    if j.distance == "l2":
      return F.mse_loss(pred, goal)
    return F.smooth_l1_loss(pred, goal, beta=j.smooth_l1_beta)

  def step(self) -> float:
    loss = self.loss()
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if self.config.optim.clip_norm > 0:
      nn.utils.clip_grad_norm_(self.params, self.config.optim.clip_norm, foreach=True)
    self.optimizer.step()
    if self.jepa:
      with torch.no_grad():
        torch._foreach_lerp_(list(self.target.parameters()), list(self.encoder.parameters()),
                             1 - self.tau)
    return loss.item()  # waits for the step, as block_until_ready does for JAX


def time_step(config: ml_collections.ConfigDict, batch: int, steps: int, warmup: int,
              gpu: bool, compile_modules: bool) -> dict:
  """Median step time of TorchStep (after `warmup` steps, which include torch.compile's
  compilation when `compile_modules`) on the GPU or every CPU core this process may use;
  peak memory on the GPU."""
  device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  step = TorchStep(config, batch, device)
  if compile_modules:
    for module in (step.encoder, step.predictor) + ((step.target,) if step.jepa else ()):
      module.compile()
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  row = {"device": device, "threads": torch.get_num_threads(), "version": torch.__version__,
         "compiled": compile_modules,
         "step_s": step_setup.median_seconds(step.step, steps, warmup)}
  if device == "cuda":
    row["peak_bytes"] = torch.cuda.max_memory_allocated()
  return row
