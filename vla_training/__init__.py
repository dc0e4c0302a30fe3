"""vla_training: datasets, training, evaluation and the demos behind the `vla` command line.

One subpackage per layer (each imports only the ones above it in this list, and vla_models):
  data/        episodes on disk, training samples, importers (research folders, rosbag2), Meta-World demos
  training/    the trainer (one process or torchrun), its config, resumable state, EMA, feature cache
  evaluation/  closed loop, offline path error, latency, rosbag evaluation, the comparison report
  demos/       `vla demo` and its variants: jobs that tie the layers together
`cli.py` parses the command line and calls one function per subcommand in these; `files.py` writes
files whole or not at all. Never imports rclpy (the ROS layer, vla_policy_ros, imports this one).
"""

from . import moved

moved.install()
