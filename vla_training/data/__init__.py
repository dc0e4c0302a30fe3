"""Datasets: the canonical episode format and everything that reads or writes it.

episodes.py      the on-disk episode format every source converts into (docs/dataset.md)
samples.py       training samples (observation + action chunk) cut from episodes at load time
messages.py      message payloads -> numpy, shared with the live node
import_seed.py   `vla data import-seed`: the research code's folder layouts -> episodes
import_bag.py    `vla data import-bag`: rosbag2 (sqlite3 / mcap) -> episodes, through rosbags
sim.py           Meta-World as a data source (`vla data sim`) and an evaluation environment
dataset_info.py  `vla data info`: what a dataset holds, and what training would make of it
plots.py         `vla data plot`: top view of the episodes' paths
commands.py      the `vla data ...` subcommands
"""
