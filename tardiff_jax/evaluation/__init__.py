"""Evaluation: metrics, the fresh-classifier engine of TSTR/TSRTR, gradient-norm statistics."""

from tardiff_jax.evaluation.downstream import evaluate_fresh
from tardiff_jax.evaluation.grad_norms import grad_norm_stats, per_example_grad_norms
from tardiff_jax.evaluation.metrics import (
    best_f1_threshold,
    binary_metrics,
    minority_class,
    minority_f1,
)

__all__ = ["best_f1_threshold", "binary_metrics", "evaluate_fresh", "grad_norm_stats",
           "minority_class", "minority_f1", "per_example_grad_norms"]
