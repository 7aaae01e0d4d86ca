# Two commands from a fresh clone (see README):
#   make demo   set up, then run the live ROS 2 node on the bundled real pairs and write the fused frames
#   make test   set up, then run the linter and the test suite
VENV ?= .venv
PYTHON ?= python3
ACTIVATE = . $(VENV)/bin/activate

.PHONY: setup build demo test lint fuse-samples clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

# Builds msg/ and installs the package into the venv the way colcon does on a robot (CMake, ament).
build: setup
	$(ACTIVATE) && tools/build_ros_package.sh

demo: build
	$(ACTIVATE) && $(VENV)/lib/sgdfuse_ros/demo --out out/demo

fuse-samples: build
	$(ACTIVATE) && sgdfuse fuse --pairs samples/pairs --out out/fused --save-intermediate

lint: setup
	$(ACTIVATE) && ruff check .

# The tests import the INSTALLED package (with its generated msg/), not the source tree.
test: build lint
	$(ACTIVATE) && pytest -ra test

clean:
	rm -rf build out
