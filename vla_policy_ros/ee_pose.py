"""Where the end-effector pose for cartesian commands comes from: a tf2 lookup (base_frame <- ee_frame) when
tf2_ros imports and `ee_frame` is set - UR, Franka and MoveIt publish TF, not a pose topic - else the
`pose_topic` (geometry_msgs/PoseStamped)."""

from __future__ import annotations

from geometry_msgs.msg import PoseStamped


def tf2_importable() -> bool:
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True


def pose_source(ee_frame: str, pose_topic: str, tf2_available: bool) -> str:
    """'tf', 'topic' or '' (no ee pose); a ValueError naming the parameters when ee_frame needs tf2 and no
    topic can stand in."""
    if ee_frame and tf2_available:
        return "tf"
    if pose_topic:
        return "topic"
    if ee_frame:
        raise ValueError(f"parameter ee_frame {ee_frame!r}: tf2_ros is not importable (install "
                         "ros-<distro>-tf2-ros), and no pose_topic is set to fall back on")
    return ""


class TfPose:
    """Looks the ee pose up in TF at `rate_hz` and hands it to `on_pose(PoseStamped)` (the newest transform;
    a lookup that fails is skipped: the pose then goes stale and the watchdog holds)."""

    def __init__(self, node, base_frame: str, ee_frame: str, rate_hz: float, on_pose) -> None:
        from rclpy.time import Time
        from tf2_ros import Buffer, TransformException, TransformListener

        self.node, self.base_frame, self.ee_frame, self.on_pose = node, base_frame, ee_frame, on_pose
        self._latest, self._errors = Time(), TransformException
        self.buffer = Buffer()
        self.listener = TransformListener(self.buffer, node)
        self.timer = node.create_timer(1.0 / rate_hz, self._lookup)
        self.failures = 0

    def _lookup(self) -> None:
        try:
            t = self.buffer.lookup_transform(self.base_frame, self.ee_frame, self._latest)
        except self._errors:
            self.failures += 1
            return
        pose = PoseStamped()
        pose.header = t.header
        pose.header.frame_id = self.base_frame
        r, q = t.transform.translation, t.transform.rotation
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = r.x, r.y, r.z
        pose.pose.orientation = q
        self.on_pose(pose)

    def destroy(self) -> None:
        self.node.destroy_timer(self.timer)
        unregister = getattr(self.listener, "unregister", None)
        if unregister is not None:
            unregister()
