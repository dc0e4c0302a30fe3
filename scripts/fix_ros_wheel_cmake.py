"""Point the ROS 2 wheels' exported CMake files at this interpreter's include directories.

The ros-python-wheels builds export `INTERFACE_INCLUDE_DIRECTORIES` naming the wheel builder's
paths (/opt/python/cp311-cp311/...), which do not exist here, so cmake refuses to configure a
package that generates messages. Rewrites them in place under PREFIX/share; idempotent.
Usage: python scripts/fix_ros_wheel_cmake.py PREFIX
"""

import re
import sys
import sysconfig
from pathlib import Path

import numpy

BUILDER_PYTHON_INCLUDE = re.compile(r"/opt/python/cp\d+-cp\d+/include/python3\.\d+")
BUILDER_NUMPY_INCLUDE = re.compile(r"/opt/python/cp\d+-cp\d+/lib/python3\.\d+/site-packages/numpy/_core/include")


def main(prefix: str) -> int:
    changed = 0
    for path in Path(prefix, "share").glob("*/cmake/*Export*.cmake"):
        text = path.read_text()
        new = BUILDER_NUMPY_INCLUDE.sub(numpy.get_include(), text)
        new = BUILDER_PYTHON_INCLUDE.sub(sysconfig.get_paths()["include"], new)
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"fix_ros_wheel_cmake: rewrote {changed} exported CMake file(s) under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
