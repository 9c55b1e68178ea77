"""Scoring, inference and reporting."""
