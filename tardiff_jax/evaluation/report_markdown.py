"""report.md: the report a user reads in two minutes (dataset, verdict, protocol tables,
fidelity and privacy, the guide classifier, per-class channel statistics, timing, plots, notes),
rendered from a validated report.json dict (`report.build_report`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tardiff_jax.evaluation.report import METRICS, REAL, is_number, metric_mean_std


def _pm(mean: float, std: float, digits: int = 3) -> str:
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _compare(a: Mapping, b: Mapping, metric: str) -> tuple[str, float, float, float]:
  """('wins'|'ties'|'loses', mean_a, mean_b, diff): a tie when |diff| <= 2 standard errors."""
  ma, sa, na = metric_mean_std(a, metric)
  mb, sb, nb = metric_mean_std(b, metric)
  diff = ma - mb
  se = math.sqrt(sa * sa / max(na, 1) + sb * sb / max(nb, 1))
  if abs(diff) <= max(2.0 * se, 1e-3):
    return "ties", ma, mb, diff
  return ("wins" if diff > 0 else "loses"), ma, mb, diff


def verdict(report: Mapping[str, Any], method: str = "tardiff",
            baseline: str = "unguided") -> str:
  """One plain-language line comparing `method` with `baseline` from the numbers.

  TSTR AUPRC and AUROC (tie = difference within 2 standard errors over seeds) and TSRTR AUPRC
  at the largest alpha; also TarDiff's TSTR AUPRC as a fraction of train-on-real.
  """
  label = "TarDiff" if method == "tardiff" else method
  tstr = report["tstr"]
  guide = report.get("guide") or {}
  if guide.get("signal") is False and method in guide.get("guided_methods", [method]):
    a = guide["metrics"]["auroc"]
    perm = guide.get("permuted_auroc") or []
    beat = (f"; guides trained on permuted labels reach {max(perm):.3f}" if perm else "")
    return (f"{label} vs {baseline}: not compared: no guidance signal. The guide classifier "
            f"does not beat chance and label-free guides on guidance-val (AUROC "
            f"{a['value']:.3f}, 95% interval [{a['lo']:.3f}, {a['hi']:.3f}]{beat}), so the "
            "guided rows follow a guide that learned nothing usable. See 'Guide classifier' "
            "below for what to try.")
  if method not in tstr or baseline not in tstr:
    missing = [m for m in (method, baseline) if m not in tstr]
    return f"{label} vs {baseline}: not available ({', '.join(missing)} not run)."
  parts = []
  for metric in ("auprc", "auroc"):
    word, ma, mb, d = _compare(tstr[method], tstr[baseline], metric)
    n = metric_mean_std(tstr[method], metric)[2]
    parts.append(f"{word} on TSTR {metric.upper()} ({ma:.3f} vs {mb:.3f}, {d:+.3f}, {n} seeds)")
  tsrtr = report.get("tsrtr", {})
  if method in tsrtr and baseline in tsrtr:
    common = sorted(set(tsrtr[method]) & set(tsrtr[baseline]), key=float)
    if common:
      a = common[-1]
      word, ma, mb, d = _compare(tsrtr[method][a], tsrtr[baseline][a], "auprc")
      parts.append(f"{word} on TSRTR AUPRC at alpha={a} ({ma:.3f} vs {mb:.3f})")
  line = f"{label} vs {baseline}: {label} " + "; ".join(parts) + "."
  if REAL in tstr:
    real = metric_mean_std(tstr[REAL], "auprc")[0]
    ours = metric_mean_std(tstr[method], "auprc")[0]
    if real > 0:
      line += f" Its TSTR AUPRC is {100 * ours / real:.0f}% of train-on-real ({real:.3f})."
  return line


def method_label(m: str, report: Mapping[str, Any] | None = None) -> str:
  if m == REAL:
    return "real (train on real, TRTR)"
  guide = (report or {}).get("guide") or {}
  if guide.get("signal") is False and m in guide.get("guided_methods", []):
    return f"{m} (no guidance signal)"
  return m


def render_markdown(report: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
  """report.md: dataset, verdict, TSTR/TSRTR/fidelity/privacy/grad-norm/timing tables, plots."""
  ds = report["dataset"]
  methods = report["methods"]
  lines = [f"# TarDiff report: {ds['name']}", ""]
  lines.append(
      f"**Data.** {ds['n_train']} train / {ds['n_val']} validation / {ds['n_test']} test stays, "
      f"{ds['T']} time steps x {ds['C']} channels; positive-class prevalence in train "
      f"{100 * float(ds['prevalence_train']):.1f}%.")
  if "oracle_auroc" in ds or "oracle_auprc" in ds:
    lines.append(f"Simulator oracle (ceiling for any classifier): AUROC "
                 f"{float(ds.get('oracle_auroc', float('nan'))):.3f}, AUPRC "
                 f"{float(ds.get('oracle_auprc', float('nan'))):.3f}.")
  lines += ["", f"**Verdict.** {verdict(report)}", ""]

  lines += ["## TSTR: train on synthetic only, test on real",
            "Fresh downstream classifier per seed; mean ± std over seeds. AUPRC is average "
            "precision (step-wise). Minority F1 uses the threshold that maximises F1 on "
            "validation. Higher is better.", "",
            "| method | AUROC | AUPRC | minority F1 | seeds |", "|---|---|---|---|---|"]
  for m in methods:
    e = report["tstr"][m]
    cells = [_pm(*metric_mean_std(e, k)[:2]) for k in METRICS]
    lines.append(f"| {method_label(m, report)} | " + " | ".join(cells)
                 + f" | {metric_mean_std(e, 'auroc')[2]} |")

  syn = [m for m in methods if m != REAL and m in report["tsrtr"]]
  if syn:
    alphas = sorted({a for m in syn for a in report["tsrtr"][m]}, key=float)
    lines += ["", "## TSRTR: real train + alpha x |real train| synthetic, test on real", ""]
    if REAL in report["tstr"]:
      r = report["tstr"][REAL]
      lines.append("Reference, real only (alpha = 0): AUROC "
                   f"{_pm(*metric_mean_std(r, 'auroc')[:2])}, AUPRC "
                   f"{_pm(*metric_mean_std(r, 'auprc')[:2])}.")
    for k in METRICS:
      name = "minority F1" if k == "minority_f1" else k.upper()
      lines += ["", f"**{name}** (mean ± std over seeds)", "",
                "| method | " + " | ".join(f"alpha={a}" for a in alphas) + " |",
                "|---|" + "---|" * len(alphas)]
      for m in syn:
        by_a = report["tsrtr"][m]
        cells = [_pm(*metric_mean_std(by_a[a], k)[:2]) if a in by_a else "-" for a in alphas]
        lines.append(f"| {method_label(m, report)} | " + " | ".join(cells) + " |")

  lines += ["", "## Fidelity and privacy",
            "Discriminative score: |accuracy - 0.5| of a GRU telling real from synthetic "
            "(0 = indistinguishable). Predictive score: test MAE of a GRU trained on the data "
            "to predict the last channel one step ahead, in units of the real test range (lower is "
            "better; compare with the train-on-real row). Membership-inference "
            "AUROC: nearest-synthetic-neighbour attack, real train vs real test (0.5 = no "
            "leakage).", "",
            "| method | discriminative | predictive MAE | membership-inference AUROC |",
            "|---|---|---|---|"]
  fid, priv = report["fidelity"], report["privacy"]

  def cell(d: Mapping | None, k: str) -> str:
    if not d or k not in d:
      return "-"
    s = d.get(f"{k}_std")
    n = d.get(f"{k}_repeats")
    txt = f"{float(d[k]):.3f}" if s is None else _pm(float(d[k]), float(s))
    return txt + (f" ({n} runs)" if n is not None else "")

  for m in methods:
    if m == REAL and m not in fid and m not in priv:
      continue
    lines.append(f"| {method_label(m, report)} | {cell(fid.get(m), 'discriminative')} | "
                 f"{cell(fid.get(m), 'predictive')} | {cell(priv.get(m), 'mir')} |")

  lines += _channel_tables(report.get("fidelity_channels"))

  lines += _scales_section(report.get("extras") or {})
  lines += _guide_section(report.get("guide"), ds)

  lines += ["", "## Guidance gradient norms by class", "",
            "| class | mean | std | count |", "|---|---|---|---|"]
  for c, e in report["grad_norms"].items():
    lines.append(f"| {c} | {float(e['mean']):.4g} | {float(e['std']):.4g} | "
                 f"{e.get('count', '-')} |")

  t = report["timing"]
  lines += ["", "## Timing", "", "| stage | seconds |", "|---|---|"]
  for k, v in t.items():
    if k != "samples_per_s" and is_number(v):
      lines.append(f"| {k.removesuffix('_s')} | {float(v):.1f} |")
  lines.append(f"\nSampling throughput: {float(t['samples_per_s']):.1f} samples/s.")

  if plots:
    lines += ["", "## Plots", ""]
    for name, rel in plots.items():
      lines.append(f"- [{name}]({rel})")
      lines.append(f"  ![{name}]({rel})")

  extras = report.get("extras") or {}
  notes = extras.get("notes")
  if notes:
    lines += ["", "## Notes (protocol trims and settings)", ""]
    for note in ([notes] if isinstance(notes, str) else notes):
      lines.append(f"- {note}")
  return "\n".join(lines) + "\n"


def _scales_section(extras: Mapping[str, Any]) -> list[str]:
  """Each guided method's scale w: fixed in the config or chosen on evaluation-val (the sweep)."""
  scales, sweeps = extras.get("scales") or {}, extras.get("scale_sweeps") or {}
  filters = extras.get("class_filters") or {}
  if not scales:
    return []
  lines = ["", "## Guidance scales",
           "Each guided method's w: chosen on evaluation-val (TSRTR alpha = 1 models early-stopped "
           "on guidance-val, mean evaluation-val AUPRC over seeds; never test) or fixed in the "
           "config. 'G over' names whose guidance-val rows the guidance gradient G averages (all, "
           "or the minority class only: then chosen on evaluation-val with w).", "",
           "| method | w | G over | chosen by | evaluation-val AUPRC over the grid |",
           "|---|---|---|---|---|"]
  for m, w in scales.items():
    w_txt = ", ".join(f"{float(v):g}" for v in w) if isinstance(w, (list, tuple)) else f"{w:g}"
    w_txt += f" | {filters.get(m, 'all')}"
    sweep = sweeps.get(m)
    if sweep:
      several = len({r.get("class_filter", "all") for r in sweep["rows"]}) > 1
      grid = "; ".join(
          f"{r['class_filter'] + ' ' if several and float(r['scale']) else ''}"
          f"w={float(r['scale']):g}: {float(r['auprc']):.3f}" for r in sweep["rows"])
      lines.append(f"| {m} | {w_txt} | evaluation-val sweep | {grid} |")
    else:
      lines.append(f"| {m} | {w_txt} | config | - |")
  return lines


def _guide_section(guide: Mapping[str, Any] | None, ds: Mapping[str, Any]) -> list[str]:
  """The guide classifier's guidance-val quality and the gate's verdict."""
  if not guide:
    return []
  m = guide["metrics"]
  iv = lambda k, d=3: (f"{m[k]['value']:.{d}f} [{m[k]['lo']:.{d}f}, "  # noqa: E731
                       f"{m[k]['hi']:.{d}f}]")
  lines = ["", "## Guide classifier",
           f"The classifier that guidance differentiates, on guidance-val ({guide['n']} cases, "
           f"{guide['positives']} of the target class; {int(100 * guide['level'])}% bootstrap "
           f"intervals over {guide['resamples']} resamples): AUROC {iv('auroc')}, AUPRC "
           f"{iv('auprc')} (prevalence in train {100 * float(ds['prevalence_train']):.1f}%), "
           f"mean loss {iv('loss', 4)}."]
  if "oracle_auroc" in ds:
    lines[-1] += f" Simulator oracle AUROC {float(ds['oracle_auroc']):.3f}."
  perm = guide.get("permuted_auroc") or []
  if perm:
    lines[-1] += (f" Guides trained the same way on {len(perm)} permutations of the training "
                  f"labels: AUROC {min(perm):.3f} to {max(perm):.3f}.")
  norms = ", ".join(f"{c}: {v['mean']:.3g} ± {v['std']:.3g}" for c, v in
                    guide.get("grad_norms", {}).items())
  if norms:
    lines[-1] += f" Per-class gradient norms (mean ± SD): {norms}."
  if guide.get("signal"):
    lines += ["", f"Guidance signal: yes ({guide['rule']})."]
  else:
    tries = "; ".join(f"`{s.split(' (')[0]}`" for s in guide.get("suggestions", []))
    lines += ["", f"**No guidance signal**: it does not hold that {guide['rule']}. The guided "
              f"methods ({', '.join(guide.get('guided_methods', []))}) follow a guide that "
              f"learned nothing usable from the labels. To try: {tries}."]
  return lines


def _channel_tables(table: Mapping[str, Any] | None) -> list[str]:
  """Per class: one row per channel, 'mean ± SD (lag-1 acf)' of real and each method."""
  if not table:
    return []
  lines = ["", "## Per-class, per-channel statistics (original units)",
           f"Each cell: mean ± SD (lag-1 autocorrelation) over observed values; real = "
           f"{table.get('reference', 'real data')}."]
  for cname, by_src in table["classes"].items():
    srcs = list(by_src)
    lines += ["", f"**{cname}**", "", "| channel | " + " | ".join(srcs) + " |",
              "|---|" + "---|" * len(srcs)]
    for ch in table["channels"]:
      cells = []
      for src in srcs:
        st = by_src[src].get(ch)
        fmt = lambda v, f: "nan" if v is None else format(v, f)  # noqa: E731
        cells.append("-" if st is None else f"{fmt(st['mean'], '.4g')} ± "
                     f"{fmt(st['std'], '.3g')} ({fmt(st['acf1'], '.2f')})")
      lines.append(f"| {ch} | " + " | ".join(cells) + " |")
  return lines
