"""The reference side of bench_vs_reference.py: the authors' PyTorch TarDiff code, timed on CPU.

Runs in a separate Python that has torch (never the project's venv; the project never imports
this file), launched by benchmarks/bench_vs_reference.py:

  /tmp/torchenv/bin/python benchmarks/reference_torch_side.py --batch 256 --steps 20

It exports the reference's own files from its git mirror (`git show COMMIT:PATH`) into a temp
dir, imports them, builds the U-Net from configs/base/mimic_icustay_base.yaml with random
weights (`--uncond`, as the reference's generation.sh runs: no DomainUnifiedEncoder context)
and times, float32, same batch and steps as our side:
  forward      LatentDiffusion.apply_model's unconditional path (DiffusionWrapper.cfg_forward ->
               UNetModel(x, t, context=None, y=label)), eval mode, no_grad;
  train_step   LatentDiffusion.p_losses (uncond path, L1 eps loss), backward, AdamW with the
               yaml's LambdaLinearScheduler, LitEma update (what Lightning runs per step, minus
               its logging and hooks);
  ddim         the reference's own DDIMSampler.sample (eta 1, as guidance_generation.py samples);
  guided_ddim  the reference's own GuideDDIMSampler.sample with guide_type 'GDC' and its
               GradDotCalculator over its RNNClassifier (bidirectional GRU, hidden 256, 2 layers,
               1 output, BCEWithLogitsLoss; gd_scale 1e-5), as guidance_generation.py builds it.
LatentDiffusion itself needs pytorch_lightning (and a checkpoint, data); the samplers are driven
by a minimal stand-in holding the same schedule buffers and the same apply_model path.

Prints ONE JSON line on stdout (everything else goes to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# The reference's files this side imports (ldm/util.py is imported by its diffusionmodules/util).
REFERENCE_FILES = (
    "configs/base/mimic_icustay_base.yaml",
    "ldm/util.py",
    "ldm/lr_scheduler.py",
    "ldm/modules/attention.py",
    "ldm/modules/ema.py",
    "ldm/modules/guidance_scorer.py",
    "ldm/modules/diffusionmodules/__init__.py",
    "ldm/modules/diffusionmodules/util.py",
    "ldm/modules/diffusionmodules/unet1d.py",
    "ldm/models/diffusion/__init__.py",
    "ldm/models/diffusion/ddim.py",
    "ldm/models/diffusion/guided_ddim.py",
    "classifier/__init__.py",
    "classifier/model.py",
)
DEFAULT_GIT_DIR = "/work/.mirror/devin-21+TarDiff/repo"


def export_reference(git_dir: str, commit: str, dest: str) -> str:
  """Writes REFERENCE_FILES at `commit` of the bare repo `git_dir` under `dest`; returns the sha."""
  sha = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", commit], check=True,
                       capture_output=True, text=True).stdout.strip()
  for path in REFERENCE_FILES:
    blob = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{sha}:{path}"], check=True,
                          capture_output=True).stdout
    out = os.path.join(dest, path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
      f.write(blob)
  return sha


def _time(fn, repeats):
  """Median wall time of `fn()` over `repeats` calls after one warm-up (as bench_diffusion)."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def build(torch, mp):
  """The stand-in for the reference's LatentDiffusion (--uncond): the buffers its samplers and
  p_losses read, DDPM.register_schedule's formulas, and apply_model's unconditional path."""
  import ldm.modules.diffusionmodules.util as dmu  # noqa: PLC0415 (the reference's own helpers)
  import numpy as np  # noqa: PLC0415
  from ldm.util import instantiate_from_config  # noqa: PLC0415

  class LatentDiffusionStandIn(torch.nn.Module):
    parameterization = "eps"

    def __init__(self):
      super().__init__()
      self.diffusion_model = instantiate_from_config(mp.unet_config)
      self.channels, self.image_size = int(mp.channels), int(mp.image_size)
      self.loss_type = mp.loss_type
      self.l_simple_weight, self.original_elbo_weight, self.v_posterior = 1.0, 0.0, 0.0
      betas = dmu.make_beta_schedule("linear", int(mp.timesteps), linear_start=mp.linear_start,
                                 linear_end=mp.linear_end)
      alphas = 1.0 - betas
      ac = np.cumprod(alphas, axis=0)
      ac_prev = np.append(1.0, ac[:-1])
      self.num_timesteps = int(betas.shape[0])
      f = lambda a: torch.tensor(a, dtype=torch.float32)
      self.register_buffer("betas", f(betas))
      self.register_buffer("alphas_cumprod", f(ac))
      self.register_buffer("alphas_cumprod_prev", f(ac_prev))
      self.register_buffer("sqrt_alphas_cumprod", f(np.sqrt(ac)))
      self.register_buffer("sqrt_one_minus_alphas_cumprod", f(np.sqrt(1.0 - ac)))
      post_var = (1 - self.v_posterior) * betas * (1.0 - ac_prev) / (1.0 - ac) \
          + self.v_posterior * betas
      self.register_buffer("posterior_variance", f(post_var))
      self.register_buffer("shift_coef", -f(np.sqrt(alphas)) * (1.0 - self.alphas_cumprod_prev)
                           / torch.sqrt(1.0 - self.alphas_cumprod))
      lvlb = self.betas ** 2 / (2 * self.posterior_variance * f(alphas)
                                * (1 - self.alphas_cumprod))
      lvlb[0] = lvlb[1]
      self.register_buffer("lvlb_weights", lvlb, persistent=False)
      self.logvar = torch.full(fill_value=0.0, size=(self.num_timesteps,))

    @property
    def device(self):
      return self.betas.device

    def apply_model(self, x_noisy, t, cond, mask=None, label=None, **kwargs):
      # LatentDiffusion.apply_model -> DiffusionWrapper.cfg_forward with conditioning_key None:
      # c_crossattn = [None], so the U-Net gets context=None.
      return self.diffusion_model(x_noisy, t, context=None, mask=mask, y=label)

    def get_learned_conditioning(self, c, return_mask=False):
      # LatentDiffusion's with cond_stage_model None (--uncond): GuideDDIMSampler calls it on
      # pred_x0 every step before its 'GDC' branch, and gets None.
      return (None, None) if return_mask else None

    def q_sample(self, x_start, t, noise):
      ext = lambda a: dmu.extract_into_tensor(a, t, x_start.shape)
      return (ext(self.sqrt_alphas_cumprod) * x_start
              + ext(self.sqrt_one_minus_alphas_cumprod) * noise)

    def p_losses(self, x_start, t, label):
      """LatentDiffusion.p_losses, unconditional path (no dis/pair/ce losses)."""
      noise = torch.randn_like(x_start)
      x_noisy = self.q_sample(x_start, t, noise)
      out = self.apply_model(x_noisy, t, None, None, label=label)
      eps_pred = dmu.return_wrap(out, dmu.extract_into_tensor(self.shift_coef, t, x_start.shape))
      assert self.loss_type == "l1"
      loss_simple = (noise - eps_pred).abs().mean([1, 2])
      logvar_t = self.logvar[t.cpu()].to(self.device)
      loss = self.l_simple_weight * (loss_simple / torch.exp(logvar_t) + logvar_t).mean()
      loss_vlb = (self.lvlb_weights[t] * (noise - eps_pred).abs().mean(dim=(1, 2))).mean()
      return loss + self.original_elbo_weight * loss_vlb

  return LatentDiffusionStandIn()


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--git_dir", default=DEFAULT_GIT_DIR)
  ap.add_argument("--commit", default="HEAD")
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--sample_repeats", type=int, default=1)
  ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: all cores "
                  "of this process's affinity)")
  ap.add_argument("--cache_n", type=int, default=64,
                  help="random 'training' rows for GradDotCalculator's cached gradient sum")
  ap.add_argument("--stages", default="forward,train_step,ddim,guided_ddim")
  ap.add_argument("--matmul_n", type=int, default=2048)
  ap.add_argument("--no_flop_count", action="store_true")
  args = ap.parse_args(argv)
  os.environ.setdefault("TQDM_DISABLE", "1")  # Before tqdm is imported (its env defaults).
  real_stdout = sys.stdout
  with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as tmp:
    res = run(args, tmp)
  real_stdout.write(json.dumps(res) + "\n")
  real_stdout.flush()


def run(args, tmp):
  sha = export_reference(args.git_dir, args.commit, tmp)
  sys.path.insert(0, tmp)
  import numpy as np  # noqa: PLC0415
  import torch  # noqa: PLC0415
  from omegaconf import OmegaConf  # noqa: PLC0415

  threads = args.threads or len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  from classifier.model import RNNClassifier  # noqa: PLC0415
  from ldm.models.diffusion.ddim import DDIMSampler  # noqa: PLC0415
  from ldm.models.diffusion.guided_ddim import GuideDDIMSampler  # noqa: PLC0415
  from ldm.modules.ema import LitEma  # noqa: PLC0415
  from ldm.modules.guidance_scorer import GradDotCalculator  # noqa: PLC0415
  from ldm.util import instantiate_from_config  # noqa: PLC0415

  cfg = OmegaConf.load(os.path.join(tmp, "configs/base/mimic_icustay_base.yaml"))
  mp = cfg.model.params
  stages = [s for s in args.stages.split(",") if s]
  B, S = args.batch, args.steps  # noqa: N806
  C, T = int(mp.channels), int(mp.image_size)  # noqa: N806
  res = {"repo_git_dir": args.git_dir, "commit": sha, "files": list(REFERENCE_FILES),
         "torch": torch.__version__, "python": platform.python_version(),
         "threads": torch.get_num_threads(), "affinity_cpus": len(os.sched_getaffinity(0)),
         "batch": B, "steps": S, "T": T, "C": C, "repeats": args.repeats,
         "sample_repeats": args.sample_repeats,
         "unet_params": OmegaConf.to_container(mp.unet_config.params),
         "stages": {}}

  # Matmul peak of this torch (MKL), float32, for context.
  n = args.matmul_n
  a, b = torch.randn(n, n), torch.randn(n, n)
  med, _ = _time(lambda: torch.mm(a, b), 3)
  res["matmul_flops_per_s"] = 2.0 * n ** 3 / med

  sm = build(torch, mp)
  unet = sm.diffusion_model
  with torch.no_grad():  # As our side: zero-initialised outputs perturbed (nothing skippable).
    for p in unet.parameters():
      p.add_(0.01)
  res["params_total"] = sum(p.numel() for p in unet.parameters())
  x = torch.randn(B, C, T)
  t = torch.arange(B) % sm.num_timesteps
  y = torch.arange(B) % int(mp.unet_config.params.num_classes)

  def flops_of(fn):
    if args.no_flop_count:
      return None
    try:
      from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415
    except ImportError:
      return None
    with FlopCounterMode(display=False) as fc:
      fn()
    return float(fc.get_total_flops())

  def stage(name, fn, repeats, flops, driver):
    med, all_s = _time(fn, repeats)
    res["stages"][name] = {"s": med, "all_s": all_s, "ms_per_sample": 1e3 * med / B,
                           "flops_torch": flops, "driver": driver}
    print(f"reference {name}: {med:.3f} s ({1e3 * med / B:.2f} ms/sample)", flush=True)

  def forward():
    with torch.no_grad():
      return sm.apply_model(x, t, None, label=y)

  unet.eval()
  fwd_flops = flops_of(forward)
  if "forward" in stages:
    stage("forward", forward, args.repeats, fwd_flops,
          "UNetModel via LatentDiffusion.apply_model's --uncond path (stand-in), eval, no_grad")

  if "train_step" in stages:
    unet.train()
    opt = torch.optim.AdamW(list(unet.parameters()), lr=float(cfg.model.base_learning_rate))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda=instantiate_from_config(mp.scheduler_config).schedule)
    ema = LitEma(unet)

    def loss_backward():
      tt = torch.randint(0, sm.num_timesteps, (B,)).long()
      loss = sm.p_losses(x, tt, y)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      return loss

    def train_step():
      loss_backward()
      opt.step()
      sched.step()
      ema(unet)

    train_step()  # Creates the optimizer state; the used parameters now have gradients.
    used = sum(p.numel() for p in unet.parameters() if p.grad is not None)
    unused = {}
    for name, p in unet.named_parameters():
      if p.grad is None:  # Grouped by the innermost named module (e.g. cond_emb_layers).
        parts = [q for q in name.split(".")[:-1] if not q.isdigit()] or [name]
        unused[parts[-1]] = unused.get(parts[-1], 0) + p.numel()
    res["params_used_in_forward"] = used
    res["unused_params"] = unused
    stage("train_step", train_step, args.repeats, flops_of(loss_backward),
          "LatentDiffusion.p_losses (uncond, L1 eps) + backward + AdamW + LambdaLinearScheduler "
          "+ LitEma (stand-in for the Lightning step, without its logging)")
    unet.eval()

  if "ddim" in stages:
    def ddim():
      DDIMSampler(sm).sample(S=S, batch_size=B, shape=(C, T), conditioning=None, verbose=False,
                             label=y, eta=1.0)
    stage("ddim", ddim, args.sample_repeats, None if fwd_flops is None else S * fwd_flops,
          "ldm.models.diffusion.ddim.DDIMSampler.sample (the reference's own), eta 1")

  if "guided_ddim" in stages:
    # guidance_generation.py: RNNClassifier(7, 256, 2, 'gru', 1), GradDotCalculator(model,
    # train_loader (batch 1), BCEWithLogitsLoss(), alpha=1e-5); the classifier is left in its
    # default (training) mode there, so its inter-layer dropout (0.2) is active, as here.
    clf = RNNClassifier(input_dim=C, hidden_dim=256, num_layers=2, rnn_type="gru", num_classes=1)
    rng = np.random.default_rng(0)
    gx = torch.tensor(rng.normal(size=(args.cache_n, T, C)), dtype=torch.float32)
    gy = torch.tensor((rng.random(args.cache_n) < 0.08).astype(np.float32))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(gx, gy), batch_size=1,
                                         shuffle=False)
    t0 = time.perf_counter()
    gdc = GradDotCalculator(clf, loader, torch.nn.BCEWithLogitsLoss(), 1e-5, device="cpu")
    res["gdc_init_s"] = time.perf_counter() - t0
    res["gdc_init_rows"] = args.cache_n
    res["classifier_params"] = sum(p.numel() for p in clf.parameters())

    def one_guidance():
      x0 = torch.randn(B, C, T)
      x0.requires_grad = True  # As GuideDDIMSampler.semantic_scoring.
      with torch.enable_grad():
        return gdc.compute_gradient(x0, y)

    g_flops = flops_of(one_guidance)
    res["guidance_call_flops_torch"] = g_flops

    def guided():
      GuideDDIMSampler(sm, guide_type="GDC", GDCalculater=gdc).sample(
          S=S, batch_size=B, shape=(C, T), conditioning=None, verbose=False, label=y, eta=1.0)
    per_step = None if fwd_flops is None or g_flops is None else fwd_flops + g_flops
    stage("guided_ddim", guided, args.sample_repeats, None if per_step is None else S * per_step,
          "ldm.models.diffusion.guided_ddim.GuideDDIMSampler.sample (the reference's own), "
          "guide_type GDC, GradDotCalculator + RNNClassifier GRU(256, 2 layers), eta 1")
  res["flops_counter"] = None if args.no_flop_count else (
      "torch.utils.flop_counter.FlopCounterMode (matmul/conv/attention ops only)")
  return res


if __name__ == "__main__":
  sys.exit(main())
