"""Evaluation: how good a trained policy is, and the report that compares several.

evaluate.py  closed-loop success in simulation, offline path error, per-stage latency, diversity
bag_eval.py  a policy on a recorded rosbag2 (offline) or a live replay's outputs
bench.py     per-stage inference latency of every expert on one backbone
report.py    report.md with tables and plots from several evaluations
commands.py  `vla eval`, `vla compare`, `vla bench`, `vla bag-eval`
"""
