"""Plots and human-readable reports of runs."""
