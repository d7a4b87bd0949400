"""Evaluation harness: versioned protocols, judges, metrics with bootstrap intervals, reports, benches."""
