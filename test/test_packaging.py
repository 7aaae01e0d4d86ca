"""Packaging: the tests run against the installed package, package.xml is valid, pip requirements are ROS-free."""

from __future__ import annotations

from pathlib import Path

import sgdfuse_ros

REPO = Path(__file__).resolve().parents[1]


def test_tests_import_the_installed_package_with_its_generated_messages():
    # The source tree has no msg/ (that name belongs to the generated code): importing it proves the install.
    from sgdfuse_ros.msg import FusionStats, StageTiming

    assert "site-packages" in sgdfuse_ros.__file__ or "dist-packages" in sgdfuse_ros.__file__
    stats = FusionStats(timings=[StageTiming(stage="stage1", milliseconds=1.5)])
    assert stats.timings[0].stage == "stage1"
    assert not (REPO / "sgdfuse_ros" / "msg").exists()


def test_package_xml_is_a_valid_format_3_ament_cmake_interface_package():
    from catkin_pkg.package import parse_package

    package = parse_package(str(REPO / "package.xml"))
    package.validate()
    assert package.package_format == 3 and package.name == "sgdfuse_ros"
    assert package.get_build_type() == "ament_cmake"
    exec_depends = {d.name for d in package.exec_depends + package.build_export_depends}
    assert {"rclpy", "message_filters", "launch_ros", "diagnostic_msgs", "sensor_msgs"} <= exec_depends
    assert "rosidl_interface_packages" in {g.name for g in package.member_of_groups}


def test_pip_requirements_hold_no_ros_wheels():
    lines = (REPO / "requirements.txt").read_text().lower().splitlines()
    names = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert names and not [n for n in names if n.startswith("ros-") or "rclpy" in n]
    assert "ros-rclpy" in (REPO / "requirements-dev.txt").read_text()
