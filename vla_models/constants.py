"""Keys of observations and training batches: use these names, not string literals."""

OBS_IMAGES = "images"  # {view: (B, H, W, 3) uint8}
OBS_INSTRUCTION = "instruction"  # list[str] of length B
OBS_SENSOR = "sensor"  # (B, T, C) float
OBS_SENSOR_MASK = "sensor_mask"  # (B,) bool, True where the sensor window holds real data
OBS_STATE = "state"  # (B, S) float
ACTION = "action"  # (B, H, A) float, in the dataset's units
ACTION_IS_PAD = "action_is_pad"  # (B, H) bool, True where the chunk runs past the episode end
SAMPLE_WEIGHT = "sample_weight"  # optional (B,) float loss weight per sample (e.g. x2 with sensor data)
# optional: the backbone's input tensors, made beside the training process (data-loader workers); without
# `pixel_values` these are computed from `images` on the policy's device
BACKBONE_INPUTS = "backbone_inputs"
VL_FEATURES = "vl_features"  # optional fusion.Features of a frozen backbone, cached (stage-1 training)

OBSERVATION_KEYS = (OBS_IMAGES, OBS_INSTRUCTION, OBS_SENSOR, OBS_SENSOR_MASK, OBS_STATE)
