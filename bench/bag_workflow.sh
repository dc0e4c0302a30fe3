#!/usr/bin/env bash
# The real workflow on the simulated robot: record bags -> convert -> train -> deploy (docs/ros.md).
#
#   bash bench/bag_workflow.sh            # N=20 recorded sessions, 1000 training steps, 20 closed-loop episodes
#
# Each session: sim_robot_node driven by the scripted expert for one episode (placement k of MT1
# seed 0) while bag_recorder records its topics; failed sessions are discarded, as for `vla data sim`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bag_workflow}
N=${N:-20}
STEPS=${STEPS:-1000}
BIN=.venv/bin
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((50 + RANDOM % 50))} AMENT_PREFIX_PATH=${AMENT_PREFIX_PATH:-$PWD/.venv}
rm -rf "$OUT"; mkdir -p "$OUT/bags"
kept=0
for k in $(seq 0 $((N - 1))); do
  $BIN/bag_recorder --ros-args -p output:="$OUT/bags/session$k" \
    -p topics:="['/joint_states', '/sensor', '/sim_robot/executed_action']" > "$OUT/recorder$k.log" 2>&1 &
  rec=$!
  $BIN/sim_robot_node --ros-args -p expert:=true -p episodes:=1 -p placement_seed:=0 -p first_placement:=$k \
    > "$OUT/sim$k.log" 2>&1
  sleep 0.5; kill -INT $rec; wait $rec || true
  if grep -q '"successes": 1' "$OUT/sim$k.log"; then kept=$((kept + 1)); else rm -rf "$OUT/bags/session$k"; fi
done
echo "recorded $kept successful sessions of $N"
$BIN/vla data import-bag "$OUT"/bags/session* --topics config/bag_topics_sim.yaml --out "$OUT/data"
$BIN/vla data info "$OUT/data" --check | tail -3
$BIN/vla train --config config/train_cpu.yaml --dataset "$OUT/data" --expert regression --out "$OUT/regression" \
  --max-steps "$STEPS"
$BIN/vla ros-demo --checkpoint "$OUT/regression" --episodes 20 --seed 1 --json "$OUT/ros_demo.json"
