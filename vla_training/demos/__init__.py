"""Demos: whole experiments as one command, built from the data, training and evaluation layers.

demo.py           `vla demo` (= `make demo`): sim data -> three experts -> evaluation -> report
vision_demo.py    `vla demo --vision`: a blind policy vs one that sees, same budget
vision_report.py  its report
probe.py          linear probes of image features (where are the objects?)
smoke_demo.py     `vla smoke-demo`: every expert on the tiny Qwen-VL backbone
ros_demo.py       `vla ros-demo`: the closed loop through ROS 2 nodes as processes
lanes.py          command-line jobs in parallel lanes (the demos' scheduler)
commands.py       `vla demo`, `vla smoke-demo`, `vla ros-demo`
"""
