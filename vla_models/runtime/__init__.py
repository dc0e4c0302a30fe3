"""ROS-free runtime pieces shared by the live node (vla_policy_ros) and the offline tools (vla_training):
time synchronisation of views, the high-rate sensor ring buffer, the robot-state history, observation
assembly, and the chunk executor. Pure Python + NumPy: no rclpy, no torch."""

from .chunk_executor import ChunkExecutor, ExecutedAction
from .observation import STATE_KEY, WAITING_FOR_SENSOR, assemble, sensor_inputs
from .sensor_buffer import SensorRingBuffer
from .state_history import StateHistory
from .synchronizer import ApproximateSynchronizer

__all__ = ["ApproximateSynchronizer", "ChunkExecutor", "ExecutedAction", "STATE_KEY", "SensorRingBuffer", "StateHistory",
           "WAITING_FOR_SENSOR", "assemble", "sensor_inputs"]
