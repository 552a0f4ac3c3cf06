"""What the step benchmarks (train_step.py, masks.py, torch_step.py) time and profile: the
compiled train step of a config with its initial state and a random batch; the ViT
passes that step makes; and the same passes as plain ViTs, without the masked-prediction
machinery, as the baseline the step is held against."""
import dataclasses
import statistics
import time
from collections.abc import Callable
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import frontends
from jepa_jax import masks, models, objectives
from jepa_jax.config import fields, shapes, validation
from jepa_jax.models import attention, layers, vit
from jepa_jax.models.predictor import BLOCKS
from jepa_jax.optim import optimizer
from jepa_jax.parallel import allocator, memory
from jepa_jax.parallel import mesh as mesh_lib
from jepa_jax.training import fit, update

OBJECTIVES = ("jepa", "mae")  # the masked-prediction objectives these benchmarks describe


def median_seconds(run: Callable[[], object], steps: int, warmup: int) -> float:
  """Median wall time of `run` (one step that waits for its result) over `steps` calls
  after `warmup` untimed ones."""
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    run()
    if i >= warmup:
      times.append(time.perf_counter() - t)
    if i == 0:  # as the training loop does
      allocator.release_free_memory()
  return statistics.median(times)


@dataclasses.dataclass
class BenchmarkStep:
  objective: object
  compiled: update.CompiledStep
  state: dict
  batch: dict       # normal noise of the config's (batch, mels, frames) shape
  compile_s: float  # the train step's compile time


def xla_flops(compiled) -> float:
  """XLA's cost_analysis FLOPs of a compiled function (NaN where it gives none)."""
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))


def optimizer_of(config, objective):
  """(optax transformation, schedules) of the config's optimizer (and EMA target) over
  1000 steps, 10 of them warm-up."""
  return optimizer.make_optimizer(config.optim, config.get("ema"), config.train.batch_size,
                                  1000, 10, objective.ema_subtree)


def compiled_step(config, total_steps: int = 1) -> tuple[object, update.CompiledStep, float]:
  """(objective, compiled step, compile seconds) for `config.train.batch_size` clips on the
  config's mesh, from abstract shapes (nothing allocated); the schedules (lr, EMA,
  curriculum) span `total_steps` for the objective and 1000 steps (10 warm-up) for the
  optimizer: lengths change values, not shapes or memory."""
  config = fit.resolved(config, 1, "none")  # the whole batch, unless the caller split it
  objective = objectives.build(config, total_steps)
  tx, schedules = optimizer_of(config, objective)
  t = time.perf_counter()
  compiled = update.compile_step(config, objective, tx, schedules,
                                 mesh_lib.make_mesh(config.mesh), shapes.input_shape(config)[0],
                                 monitors=False)
  return objective, compiled, time.perf_counter() - t


def benchmark_step(config, total_steps: int = 1) -> BenchmarkStep:
  """compiled_step with its initial state and a random batch of the config's shape."""
  batch = config.train.batch_size
  mels, frames = shapes.input_shape(config)
  objective, compiled, compile_s = compiled_step(config, total_steps)
  bs = compiled.batch_sharding
  data = {"mel": jax.device_put(np.random.default_rng(0).normal(
      size=(batch, mels, frames)).astype(np.float32), bs),
          "id": jax.device_put(np.arange(batch, dtype=np.int32), bs)}
  return BenchmarkStep(objective, compiled, compiled.initial_state(), data, compile_s)


@dataclasses.dataclass(frozen=True)
class Pass:
  """One ViT pass of a train step, per clip: `sequences` sequences of `tokens` tokens
  through the stack of params[module]; trained passes run forward and backward, the
  others (the EMA target) forward only. Each query attends to `keys` tokens (`tokens`
  for global attention, the window's size for local)."""
  name: str
  module: str
  sequences: int
  tokens: int
  keys: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  trained: bool


def predictor_section(config: ml_collections.ConfigDict) -> str:
  return "predictor" if config.objective == "jepa" else "decoder"


def check_objective(config: ml_collections.ConfigDict) -> None:
  if config.objective not in OBJECTIVES:
    raise fields.ConfigError(
        f"objective {config.objective!r} is not benchmarked here; use a config whose "
        f"objective is one of {OBJECTIVES}")


def mask_shapes(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  """(mask sets K, context slots Nc, target groups M, target slots Nt) of one clip."""
  grid = shapes.grid(config)
  m = jax.eval_shape(lambda k: masks.sample(k, 1, grid, config.mask), jax.random.key(0))
  k, nc = m.context_idx.shape[1:]
  groups, nt = m.target_idx.shape[2:]
  return k, nc, groups, nt


def step_passes(config: ml_collections.ConfigDict) -> list[Pass]:
  """The ViT passes of one clip's train step: the context encoder on each mask set's
  context slots; for JEPA the EMA target encoder on the target slots ('audio' targets) or
  the whole grid ('latent'); the predictor / decoder on the restored grid (full_grid) or
  on context plus target slots, once per target group (queries). Slot counts include
  the padding of block masks, which the step computes too."""
  check_objective(config)
  grid = shapes.grid(config)
  n = grid[0] * grid[1]
  k, nc, groups, nt = mask_shapes(config)
  m = config.model
  encoder = dict(width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim)
  passes = [Pass("context", "encoder", k, nc, nc, trained=True, **encoder)]
  if config.objective == "jepa":
    tokens = k * groups * nt if config.jepa.target_domain == "audio" else n
    passes.append(Pass("target", "encoder", 1, tokens, tokens, trained=False, **encoder))
  name = predictor_section(config)
  h = config[name]
  shape = dict(width=h.width, depth=h.depth, num_heads=h.num_heads, mlp_dim=h.mlp_dim)
  windows = models.windows(h, grid)
  if h.layout == "full_grid":
    keys = n if windows is None else windows.size[0] * windows.size[1]
    passes.append(Pass(name, name, k, n, keys, trained=True, **shape))
  else:
    passes.append(Pass(name, name, k * groups, nc + nt, nc + nt, trained=True, **shape))
  return passes


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def pass_flops(p: Pass, params: int) -> int:
  """FLOPs of one clip's pass through a module of `params` parameters."""
  passes = 3 if p.trained else 1  # backward = 2 x forward
  return p.sequences * passes * (2 * params * p.tokens + 4 * p.tokens * p.keys * p.width * p.depth)


def with_tokens(config: ml_collections.ConfigDict, tokens: int) -> ml_collections.ConfigDict:
  """The config with `tokens` patches per clip: its own front end when its mel rows divide
  the count, else the first front end whose rows do; the crop length makes up the rest."""
  pf, pt = shapes.patch_shape(config)
  names = [config.data.frontend] + [n for n in frontends.FRONTENDS if n != config.data.frontend]
  for name in names:
    rows = frontends.get_frontend(name).n_mels // pf
    if tokens % rows == 0:
      c = config.copy_and_resolve_references()
      c.data.frontend, c.data.frames = name, tokens // rows * pt
      validation.validate(c)  # e.g. attention windows that do not tile the new grid
      return c
  rows = sorted({frontends.get_frontend(n).n_mels // pf for n in names})
  raise fields.ConfigError(f"{tokens} tokens per clip: no front end's number of {pf}-bin "
                           f"mel rows {rows} divides it; use a multiple of one of them")


class PlainPredictor(nn.Module):
  """The predictor / decoder's matrix work without its mask tokens, scatters and
  gathers: linear in, the same stack (local windows and block included), linear out."""
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  out_dim: int
  dtype: layers.Dtype
  windows: attention.Windows | None
  scan: bool
  remat: str
  block: str = "prenorm"   # models.predictor.BLOCKS

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = layers.dense(self.width, (None, "embed"), self.dtype, "embed")(x)
    x = vit.Transformer(self.depth, self.num_heads, self.mlp_dim, self.dtype,
                        windows=self.windows, scan=self.scan, remat=self.remat,
                        block=BLOCKS[self.block], name="transformer")(x)
    return layers.dense(self.out_dim, ("embed", None), self.dtype, "project")(x)


@dataclasses.dataclass
class PlainStep:
  step: Callable    # compiled (params, frozen encoder params, inputs) -> (params, loss)
  params: dict
  frozen: dict      # the target pass's encoder (a copy, never updated)
  inputs: dict
  compile_s: float


def plain_step(config: ml_collections.ConfigDict) -> PlainStep:
  """The step's passes (step_passes) as plain ViTs on random inputs: jepa_jax.models.vit's
  encoder forward and backward on the context token count, forward on the target pass's,
  and a predictor-sized ViT forward and backward on the predictor's; the loss is the sum
  of the outputs' mean cubes (plus the target pass's mean) and the update plain SGD.
  So the matrix work of the step without masks, gathers, loss, AdamW or EMA."""
  passes = {p.name: p for p in step_passes(config)}
  batch = config.train.batch_size
  name = predictor_section(config)
  grid = shapes.grid(config)
  n = grid[0] * grid[1]
  pf, pt = shapes.patch_shape(config)
  encoder = models.build_encoder(config, grid)
  predictor_pass, h = passes[name], config[name]
  out_dim = config.model.width if name == "predictor" else pf * pt
  predictor = PlainPredictor(h.width, h.depth, h.num_heads, h.mlp_dim, out_dim,
                             models.DTYPES[config.model.dtype], models.windows(h, grid),
                             block=h.block, **models.stack_options(h))
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.rules(config)

  def encode(params, p: Pass, patches):
    idx = jnp.broadcast_to(jnp.arange(p.tokens) % n, patches.shape[:2])
    return encoder.apply({"params": params}, patches, idx)

  def loss_fn(params, frozen, inputs):
    context = encode(params["encoder"], passes["context"], inputs["context"])
    out = predictor.apply({"params": params["predictor"]}, inputs["predictor"])
    # Mean cubes: a mean square after the encoder's final LayerNorm would be constant.
    loss = jnp.mean(context.astype(jnp.float32) ** 3) + jnp.mean(out.astype(jnp.float32) ** 3)
    if "target" in passes:
      target = jax.lax.stop_gradient(encode(frozen, passes["target"], inputs["target"]))
      loss = loss + jnp.mean(target.astype(jnp.float32))
    return loss

  def sgd_step(params, frozen, inputs):
    loss, grads = jax.value_and_grad(loss_fn)(params, frozen, inputs)
    return jax.tree.map(lambda w, g: w - 1e-4 * g, params, grads), loss

  rng = np.random.default_rng(0)
  input_shapes = {key: (batch * p.sequences, p.tokens, pf * pt) for key, p in passes.items()
                  if key != name}
  input_shapes["predictor"] = (batch * predictor_pass.sequences, predictor_pass.tokens,
                               config.model.width)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    bs, rep = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)
    inputs = {key: jax.device_put(rng.normal(size=s).astype(np.float32), bs)
              for key, s in input_shapes.items()}
    init_rng = jax.random.key(0)
    params = jax.jit(lambda r: nn.unbox({
        "encoder": models.init_encoder(encoder, r),
        "predictor": predictor.init(r, inputs["predictor"][:1])["params"]}),
        out_shardings=rep)(init_rng)
    frozen = jax.tree.map(jnp.copy, params["encoder"])
    t = time.perf_counter()
    step = jax.jit(sgd_step, donate_argnums=(0,)).lower(params, frozen, inputs).compile()
    compile_s = time.perf_counter() - t
  return PlainStep(step, params, frozen, inputs, compile_s)


CPU_ATTENTION = ("xla", "dense", "blockwise", "auto")  # model.attention_impl


def scoreless_attention(q, k, v, key_mask, segments, implementation):
  """attention.attend's inputs and output with no (S, S) array: q times the mean over
  positions of k * v (q, k and v all kept for the backward, as attention keeps them)."""
  del key_mask, segments, implementation
  return q * (k * v).mean(1, keepdims=True)


def peak_by_attention(config: ml_collections.ConfigDict,
                      implementations: tuple[str, ...] = CPU_ATTENTION) -> dict:
  """XLA's peak bytes of the step (compiled only, nothing allocated) per implementation
  ('xla' and 'auto' among them) and with scoreless_attention in place of attention. The
  score matrices' share of the peak: 'xla' (jax.nn.dot_product_attention, which holds
  them) minus scoreless; what 'auto' removes of that share."""
  def peak(impl: str) -> int:
    c = config.copy_and_resolve_references()
    c.model.attention_impl = impl
    return memory.needed_bytes(compiled_step(c)[1].step)

  peaks = {impl: peak(impl) for impl in implementations}
  with mock.patch.object(attention, "attend", scoreless_attention):
    peaks["scoreless"] = peak("auto")
  share = peaks["xla"] - peaks["scoreless"]
  return {"peak_bytes": peaks, "score_share_bytes": share,
          "auto_removes_of_score_share": (peaks["xla"] - peaks["auto"]) / share}
