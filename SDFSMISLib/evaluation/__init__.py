"""Evaluation as few-shot papers report it: the test protocol, the fold runner, baselines, metrics and reports.
"""
