"""Experiments: the sweep (configuration and presets, stages, model specs, numbers across seeds, reports), Pareto
plots, the method's figures and the HTML report of runs."""
