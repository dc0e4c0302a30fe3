"""vla_training: datasets, the `vla` command line (training, evaluation, reports). Never imports rclpy."""
