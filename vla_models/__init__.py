"""vla_models: the pure-PyTorch part of the VLA policy suite (never imports rclpy or vla_training).

    from vla_models import PolicyConfig, build_policy, load_policy
    policy = build_policy(PolicyConfig.from_file("config/model_tiny.yaml"))
    chunk = policy.predict_action_chunk(observation)          # (B, H, A)
"""

from .checkpoint import load_policy, save_policy
from .config import PolicyConfig
from .errors import CheckpointError, ConfigError, ObservationError
from .policy import VLAPolicy, build_policy
from .presets import PRESETS, preset

__all__ = ["PolicyConfig", "VLAPolicy", "build_policy", "load_policy", "save_policy", "preset", "PRESETS",
           "ConfigError", "ObservationError", "CheckpointError"]
