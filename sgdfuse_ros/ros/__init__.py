"""ROS 2 adapter: the only part of sgdfuse_ros that imports rclpy."""
