"""Default configuration: the full TarDiff pipeline on the embedded ICU simulator, sized for a
2-core CPU (see README). Variants: `--config=configs/default.py:paper` switches the U-Net and the
GRU to the reference code's sizes (slow on a CPU)."""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Master seed: model init, training order, sampling keys derive from it.

  # ---------------------------------------------------------------- data (SPECS 1-2)
  c.data = ml_collections.ConfigDict()
  c.data.source = "simulator"  # "simulator" or "file" (then set data.path).
  c.data.path = ""  # .npz (x, y[, mask] or pre-split x_train/...) or a reference-code pickle.
  c.data.allow_pickle = False  # Pickles run code when loaded: opt in only for files you trust.
  # The simulator is free: the default draws 10,000 stays and keeps the TRAINING split at 1,000
  # (where the learning curve in benchmarks/results/ still rises: synthetic data can only help a
  # data-limited model; and the ~100 protocol models of the evaluation fit the 20-minute CPU
  # budget), with large validation and test splits so that method differences are not lost in
  # evaluation noise. Files you bring use 80/10/10 unless they are pre-split.
  c.data.num_stays = 10000  # Simulator: number of ICU stays drawn (before splitting).
  c.data.sim_seed = 0  # Simulator seed (independent of the model seed).
  c.data.label = "mortality"  # Simulator label: "mortality" or "long_stay" (ICU stay > 3 days).
  c.data.missing_rate = 0.15  # Simulator: fraction of unobserved values (masked).
  c.data.prevalence = 0.08  # Simulator: target mortality rate (MIMIC-III: 1,680 / 20,920).
  c.data.split_seed = 0  # Seed of the stratified train/val/test split.
  c.data.val_fraction = 0.2  # Validation (= guidance set) fraction of all stays.
  c.data.test_fraction = 0.7  # Test fraction; touched once, for the final numbers.
  c.data.guide_val_fraction = 0.5  # Part of val that builds G; the rest picks the guidance scale.
  c.data.normalizer = "zscore"  # "zscore", "minmax" or "pit" (centered PIT); fitted on train.

  # ---------------------------------------------------------------- diffusion (issue 3)
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "ldm_linear"  # "ldm_linear" (reference), "linear" or "cosine".
  c.diffusion.num_timesteps = 200  # Training diffusion steps T.
  c.diffusion.beta_start = 5e-4  # First beta (ldm_linear / linear).
  c.diffusion.beta_end = 0.1  # Last beta (ldm_linear / linear).
  c.diffusion.loss = "l1"  # Denoising loss: "l1" (reference) or "l2"; masked.
  # Network target: "eps" (reference code) or "v". With eps and ldm_linear, sqrt(alpha_bar) at
  # t = T-1 is 0.025, so eps errors reach x0_hat 40x amplified; the first DDIM step then fixes a
  # far too wide sample (benchmarks/results/diffusion_fidelity_default*.md). v maps 1:1.
  c.diffusion.prediction = "v"

  c.unet = ml_collections.ConfigDict()
  c.unet.base_channels = 32  # Channels at the first level.
  c.unet.channel_mult = (1, 2, 2)  # Channel multiplier per level (each level halves T).
  c.unet.num_res_blocks = 1  # Residual blocks per level.
  c.unet.attention_resolutions = (2,)  # Downsampling factors with self-attention.
  c.unet.num_heads = 4  # Attention heads.
  # GroupNorm groups (gcd with each width). 32 (the reference) at 32 channels normalises each
  # feature alone over time and erases a stay's level: samples were 13-51% under-dispersed;
  # 8 groups fixed 8 of the 11 failing std cells (benchmarks/results/diffusion_fidelity_gn8_1k.md).
  c.unet.norm_groups = 8
  c.unet.dropout = 0.0  # Dropout inside residual blocks.
  c.unet.label_dropout = 0.1  # Probability of the null label in training (classifier-free).

  c.train_diffusion = ml_collections.ConfigDict()
  c.train_diffusion.batch_size = 64  # Examples per step (measured: ~0.1 s/step on 2 cores).
  c.train_diffusion.num_steps = 2500  # Optimiser steps (160 epochs of 1,000 training stays).
  c.train_diffusion.learning_rate = 1e-3  # Peak learning rate after warm-up.
  c.train_diffusion.warmup_steps = 200  # Linear warm-up steps.
  c.train_diffusion.lr_schedule = "cosine"  # After warm-up: "cosine" (decay to 0) or "constant".
  c.train_diffusion.weight_decay = 0.0  # AdamW weight decay (0 = Adam).
  c.train_diffusion.grad_clip = 1.0  # Global-norm gradient clipping.
  c.train_diffusion.ema_decay = 0.999  # EMA of parameters (sampling uses the EMA).
  c.train_diffusion.checkpoint_every = 500  # Steps between orbax checkpoints.
  c.train_diffusion.log_every = 50  # Steps between metrics.jsonl lines / progress updates.
  # Denoiser input at unobserved entries (the loss is masked either way): "interp" (linear
  # interpolation between the stay's observations) or "zero" (the normalised fill, the train
  # mean). Measured: zero-filled holes teach the denoiser to amplify levels, so samples of a
  # channel are over-dispersed in proportion to its missing rate (Temp, 36% missing: +25% std).
  c.train_diffusion.fill = "interp"

  # ---------------------------------------------------------------- downstream models (issue 4)
  c.classifier = ml_collections.ConfigDict()
  c.classifier.model = "gru"  # Guidance model: "gru" (as the reference code) or "timesnet".
  # TimesNet, the downstream model of the protocols. CPU-sized: SPECS 5 suggests d_model 32,
  # d_ff 64, e_layers 2, num_kernels 6 (the `paper` variant); that model trains at ~590
  # examples/s on 2 cores, this one at ~7,800 with the same test AUROC/AUPRC at 1,000 training
  # stays as d_ff 32 (0.766/0.277 vs 0.767/0.285, 3 seeds), which is what lets the protocols'
  # ~90 fresh models fit the default run's budget.
  c.classifier.timesnet = ml_collections.ConfigDict()
  c.classifier.timesnet.d_model = 16  # Hidden width.
  c.classifier.timesnet.d_ff = 16  # Inception hidden width.
  c.classifier.timesnet.e_layers = 1  # TimesBlocks.
  c.classifier.timesnet.top_k = 3  # Periods, fixed at setup from the train split's spectrum.
  c.classifier.timesnet.num_kernels = 3  # Inception kernels 1, 3, 5, ...
  c.classifier.timesnet.dropout = 0.1  # Dropout.
  c.classifier.timesnet.periods = ()  # Fixed periods; () = timesnet_periods(x_train, top_k).
  c.classifier.gru = ml_collections.ConfigDict()
  c.classifier.gru.hidden = 64  # GRU hidden size per direction (reference: 256).
  c.classifier.gru.num_layers = 2  # Stacked bidirectional layers.

  c.train_classifier = ml_collections.ConfigDict()
  c.train_classifier.batch_size = 128  # Examples per step.
  c.train_classifier.max_epochs = 12  # Upper bound on epochs (budget; TimesNet often uses all).
  c.train_classifier.patience = 3  # Early stopping on validation AUPRC (never test).
  c.train_classifier.learning_rate = 1e-3  # Adam learning rate.
  c.train_classifier.class_weighting = False  # Weight the loss by inverse class frequency.
  c.train_classifier.eval_batch_size = 1024  # Validation examples per jitted prediction call.

  # ---------------------------------------------------------------- guidance (issue 5)
  c.guidance = ml_collections.ConfigDict()
  c.guidance.method = "tardiff"  # "tardiff" (influence), "classifier", "batch", or "none".
  c.guidance.variant = "dot"  # Influence score: "dot", "cosine", "batch", "classifier", "none".
  c.guidance.scale = 10.0  # w; w > 0 favours samples that lower the guidance-set loss.
  c.guidance.evaluate_on = "x0_hat"  # "x0_hat" (default) or "x_t".
  c.guidance.through_denoiser = False  # Differentiate through x0_hat(x_t).
  c.guidance.class_filter = "all"  # G over "all", "minority" or "majority" guidance samples.
  c.guidance.normalize_cache = False  # l2-normalise G.
  c.guidance.cache_batch_size = 256  # Guidance examples per vmapped batch.
  # Sweep for scale selection (eval-val). Measured on the default run (benchmarks/results/
  # influence_vs_scale.md): w = 10 moves samples by ~0.5 SD RMS, w = 100 by ~2.8 SD, w = 1000 by
  # ~22 SD (samples destroyed), while mean influence rises with w throughout.
  c.guidance.scale_grid = (0.0, 3.0, 10.0, 30.0)
  c.guidance.select_scale = True  # Pick w on evaluation-val AUPRC; else use guidance.scale.
  c.guidance.class_scales = ()  # Per-class w (one per label) overriding scale; () = use scale.
  c.guidance.clip = 0.0  # Max per-sample l2 norm of the influence gradient J; 0 = off.
  c.guidance.normalize_grad = False  # Divide J by its per-sample l2 norm (off by default).

  # ---------------------------------------------------------------- sampling (issues 3, 5)
  c.sampling = ml_collections.ConfigDict()
  c.sampling.sampler = "ddim"  # "ddim" or "ddpm".
  c.sampling.num_steps = 20  # DDIM steps S (ddpm uses all T).
  c.sampling.eta = 1.0  # DDIM eta (1.0 as the reference code samples).
  c.sampling.cfg_scale = 1.0  # Classifier-free guidance scale (1 = plain conditional).
  c.sampling.clip_x0 = 0.0  # Clip x0_hat to [-c, c] at each step; 0 = off (z-scored data).
  # Noise of each DDIM step: "analytic" (Analytic-DPM: adds x0's posterior variance per channel
  # and time frequency, estimated once per model on the training split) or "ddim" (the step's own
  # sigma, as the reference code; measured: DDIM-20 spreads then fall 11-12% below DDPM-200's).
  c.sampling.variance = "analytic"
  # Recalibrate x0_hat linearly per step, class, channel and DCT time frequency, fitted once per
  # model on the training split (estimate_calibration). Measured: at high noise the trained
  # denoiser pulls a stay's level towards its class mean further than E[x0 | x_t] would (most
  # for the rare class), so class-1 samples came out 17-30% too narrow (32-33/42 fidelity
  # cells); calibrated: 42/42 (benchmarks/results/fidelity_ablation.md). Works with the
  # analytic variance: alone (variance "ddim") it leaves samples too smooth (32/42).
  c.sampling.calibrate_x0 = True
  c.sampling.batch_size = 256  # Samples per jitted sampler call.
  c.sampling.counts = "match"  # "match" (training class counts), "balanced", or "n0,n1,...".

  # ---------------------------------------------------------------- evaluation (issue 6)
  c.evaluation = ml_collections.ConfigDict()
  c.evaluation.downstream = "timesnet"  # Fresh model for TSTR/TSRTR: "timesnet" or "gru".
  c.evaluation.num_seeds = 3  # Seeds per protocol setting.
  # TSRTR synthetic ratios. The paper's grid is (0.2, 0.4, 0.6, 0.8, 1.0); the CPU default
  # trims it to three ratios to fit 20 minutes (the report says so; `:paper` restores it).
  c.evaluation.alphas = (0.2, 0.6, 1.0)
  c.evaluation.methods = ("unguided", "tardiff", "classifier", "batch", "oversample",
                          "augment")  # Synthetic methods evaluated (each gets synthetic/<m>.npz).
  c.evaluation.classifier_scale = 1.0  # w of the classifier-guidance baseline (grad log p(y|x)).
  c.evaluation.batch_scale = 1.0  # w of the reference code's batch-normalised guidance baseline.
  c.evaluation.fidelity_repeats = 3  # Repeats of the discriminative score (SPECS 6 asks 5).
  c.evaluation.fidelity_steps = 400  # GRU training steps of the fidelity scores.

  if variant == "paper":
    c.unet.base_channels = 64
    c.unet.channel_mult = (1, 2, 4, 4)
    c.unet.num_res_blocks = 2
    c.unet.attention_resolutions = (1, 2, 4)
    c.unet.num_heads = 8
    c.unet.norm_groups = 32  # The reference's GroupNorm32 (2 channels per group at 64).
    c.classifier.model = "gru"
    c.classifier.gru.hidden = 256
    c.classifier.timesnet.d_model = 32  # SPECS 5 sizes.
    c.classifier.timesnet.d_ff = 64
    c.classifier.timesnet.e_layers = 2
    c.classifier.timesnet.num_kernels = 6
    c.evaluation.alphas = (0.2, 0.4, 0.6, 0.8, 1.0)
    c.train_diffusion.batch_size = 256
    c.train_diffusion.learning_rate = 1e-4
  elif variant not in (None, ""):
    raise ValueError(f"Unknown config variant {variant!r}; expected 'paper' or none.")
  return c
