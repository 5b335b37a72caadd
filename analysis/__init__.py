"""Evaluation and analysis engines: probes, corruption evaluation, metrics, frequency analysis.

Kept light on purpose: import the submodule you need (``from analysis.probes import knn_probe``).
"""
