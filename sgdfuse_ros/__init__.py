"""sgdfuse_ros: SAM-guided diffusion fusion of thermal (IR) and visible images, with a ROS 2 node."""

__version__ = "0.1.0"
