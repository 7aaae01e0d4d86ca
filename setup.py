"""pip install of the sgdfuse_ros library (no ROS needed): models, priors, pipeline, metrics, CLI.

colcon ignores this file (package.xml says ament_cmake); on a robot colcon installs the same Python
package beside the generated interfaces (see CMakeLists.txt and README).
"""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.split("#")[0].strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name="sgdfuse_ros",
    version="0.1.0",
    description="SGDFuse thermal-visible image fusion with a ROS 2 node",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sgdfuse_ros", "sgdfuse_ros.*"]),
    # message_definitions/: a copy of msg/ for the bag tools without ROS (msg/ inside the package belongs to the
    # code rosidl generates on a ROS install).
    package_data={"sgdfuse_ros": ["weights/*.pt", "weights/*.json", "message_definitions/*.msg"]},
    install_requires=requirements,
    entry_points={"console_scripts": ["sgdfuse=sgdfuse_ros.cli:main"]},
)
