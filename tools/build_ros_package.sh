#!/usr/bin/env bash
# Build and install this ament_cmake package (interfaces from msg/, the Python package, launch/ and
# config/) into the active virtual environment, the way colcon would, using only PyPI ROS wheels.
# On a robot with a ROS install use colcon instead (README "Install on a robot").
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
: "${VIRTUAL_ENV:?activate the virtual environment first}"
build_dir=${BUILD_DIR:-$here/build/ros}
mkdir -p "$build_dir"

# The wheels' exported CMake files hard-code the wheel builder's Python include paths.
PYINC=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NPINC=$(python -c "import numpy; print(numpy.get_include())")
stale=$(grep -rl '/opt/python/cp3' "$VIRTUAL_ENV/share" --include='*.cmake' 2>/dev/null || true)
if [ -n "$stale" ]; then
  echo "$stale" | xargs sed -i \
    -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/include/python3\.[0-9]*#$PYINC#g" \
    -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/lib/python3\.[0-9]*/site-packages/numpy/_core/include#$NPINC#g"
fi

AMENT_PREFIX_PATH=$VIRTUAL_ENV CMAKE_PREFIX_PATH=$VIRTUAL_ENV cmake -S "$here" -B "$build_dir" \
  -DCMAKE_INSTALL_PREFIX="$VIRTUAL_ENV" -DPython3_EXECUTABLE="$VIRTUAL_ENV/bin/python3" \
  -DBUILD_TESTING=OFF >"$build_dir.log" 2>&1 || { cat "$build_dir.log"; exit 1; }
cmake --build "$build_dir" -j2 >>"$build_dir.log" 2>&1 || { tail -50 "$build_dir.log"; exit 1; }
cmake --install "$build_dir" >>"$build_dir.log" 2>&1 || { tail -50 "$build_dir.log"; exit 1; }
echo "installed sgdfuse_ros into $VIRTUAL_ENV (log: $build_dir.log)"

# Developer mode (like colcon --symlink-install): the installed hand-written modules become links to
# the source tree, so edits are live while the generated msg/ code stays in the install.
if [ "${SYMLINK_INSTALL:-0}" = 1 ]; then
  site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  for entry in "$here"/sgdfuse_ros/*; do
    name=$(basename "$entry")
    [ "$name" = "__pycache__" ] && continue
    rm -rf "${site:?}/sgdfuse_ros/$name"
    ln -s "$entry" "$site/sgdfuse_ros/$name"
  done
  echo "symlinked sgdfuse_ros modules in $site to $here/sgdfuse_ros"
fi
