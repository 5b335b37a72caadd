"""Evaluation and analysis engines: probes, corruption evaluation, metrics, frequency analysis, reports.

The public pieces are importable from the package (``from analysis import knn_probe, compare``), each
loaded on first use, so ``import analysis.probes`` pulls in neither the evaluation nor the report.
"""

from __future__ import annotations

from fdbench.lazy import lazy_exports

_HOMES = {
    "LinearProbe": "probes",
    "KNNProbe": "probes",
    "fit_linear_probe": "probes",
    "knn_probe": "probes",
    "EvalConfig": "evaluate",
    "evaluate_corruptions": "evaluate",
    "RetrievalConfig": "retrieval",
    "evaluate_retrieval": "retrieval",
    "evaluate_rankings": "retrieval_metrics",
    "FrequencyConfig": "frequency",
    "run_frequency_analysis": "frequency",
    "fourier_heatmap": "frequency_analyses",
    "bandpass_accuracy": "frequency_analyses",
    "corruption_spectra": "frequency_analyses",
    "summarise": "metrics",
    "mcnemar_exact": "stats",
    "differences": "stats",
    "CeilingConfig": "ceiling",
    "train_ceiling": "ceiling",
    "compare": "report",
    "CompareReport": "report",
}
__all__ = sorted(_HOMES)

__getattr__ = lazy_exports(__name__, _HOMES)
