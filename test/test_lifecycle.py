"""The fusion node as a managed (lifecycle) node, driven through its real lifecycle services, and its fault exits.

* unconfigured -> configure -> inactive (pipeline loaded, no input subscriptions) -> activate (fuses)
  -> deactivate (input gone, worker stopped) -> cleanup (pipeline released) -> configure/activate again
  -> shutdown (finalized; the process would exit 0);
* a configure that cannot load its weights is a FAILURE naming the path, and the node stays unconfigured;
* a sticky CUDA error (injected through the pipeline factory) makes the process exit with status 3.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sgdfuse_ros.msg")

from builtin_interfaces.msg import Time  # noqa: E402
from conftest import ros_subprocess_env, wait_for  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sgdfuse_ros.frame_core import EXIT_CUDA_FAULT  # noqa: E402
from sgdfuse_ros.ros.conversion import array_to_image  # noqa: E402
from sgdfuse_ros.ros.node import FusionNode  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
WAIT = 30.0


class Harness:
    """A FusionNode with autostart off, a client node calling its lifecycle services and publishing pairs."""

    def __init__(self, namespace: str, overrides: dict) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        parameters = [Parameter(k, value=v) for k, v in {"autostart": False, **overrides}.items()]
        self.node = FusionNode("lc", namespace=namespace, context=self.context, parameter_overrides=parameters)
        self.client = rclpy.create_node("lc_client", namespace=namespace, context=self.context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.thermal = self.client.create_publisher(Image, "thermal/image", reliable)
        self.rgb = self.client.create_publisher(Image, "rgb/image", reliable)
        self.change = self.client.create_client(ChangeState, f"{namespace}/lc/change_state")
        self.get = self.client.create_client(GetState, f"{namespace}/lc/get_state")
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        threading.Thread(target=self.executor.spin, daemon=True).start()
        self._stamp = 1_700_000_000

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=WAIT)
        future = client.call_async(request)
        wait_for(future.done, what="a lifecycle service response")
        return future.result()

    def state(self) -> str:
        return self.call(self.get, GetState.Request()).current_state.label

    def transition(self, transition_id: int) -> bool:
        return self.call(self.change, ChangeState.Request(transition=Transition(id=transition_id))).success

    def send_pair(self) -> None:
        self._stamp += 1
        header = Header(stamp=Time(sec=self._stamp), frame_id="cam")
        self.thermal.publish(array_to_image(np.full((48, 64), 128, np.uint8), "mono8", header))
        self.rgb.publish(array_to_image(np.full((48, 64, 3), 90, np.uint8), "rgb8", header))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.client.destroy_node()
        self.node.destroy_node()
        self.context.try_shutdown()


def test_lifecycle_states_through_the_real_services(stage1_weights):
    overrides = {"compute.torch_threads": 1, "node.input_qos": "reliable", "node.diagnostics_period": 0.2}
    if stage1_weights:
        overrides["stage1.weights"] = stage1_weights
    h = Harness("/lifecycle", overrides)
    node = h.node
    try:
        assert h.state() == "unconfigured" and node.pipeline is None
        assert h.thermal.get_subscription_count() == 0

        assert h.transition(Transition.TRANSITION_CONFIGURE) and h.state() == "inactive"
        assert node.pipeline is not None and node.pipeline.prior_name == "fallback"
        time.sleep(0.5)
        assert h.thermal.get_subscription_count() == 0  # inactive: no input

        assert h.transition(Transition.TRANSITION_ACTIVATE) and h.state() == "active"
        wait_for(lambda: h.thermal.get_subscription_count() >= 1 and h.rgb.get_subscription_count() >= 1, what="inputs")
        h.send_pair()
        wait_for(lambda: node.counters()["fused"] == 1, what="a fused pair while active")

        assert h.transition(Transition.TRANSITION_DEACTIVATE) and h.state() == "inactive"
        assert node._worker is None  # drained and stopped
        wait_for(lambda: h.thermal.get_subscription_count() == 0, what="the inputs to go away")
        received = node.counters()["received_thermal"]
        h.send_pair()
        time.sleep(0.5)
        assert node.counters()["received_thermal"] == received  # nothing arrives while inactive

        assert h.transition(Transition.TRANSITION_CLEANUP) and h.state() == "unconfigured"
        assert node.pipeline is None and node._outputs == {}

        assert h.transition(Transition.TRANSITION_CONFIGURE) and h.transition(Transition.TRANSITION_ACTIVATE)
        wait_for(lambda: h.thermal.get_subscription_count() >= 1 and h.rgb.get_subscription_count() >= 1, what="inputs")
        h.send_pair()
        wait_for(lambda: node.counters()["fused"] == 1, what="a fused pair after reconfiguring (counters start afresh)")

        assert h.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN) and h.state() == "finalized"
        assert node.finished.is_set() and node.pipeline is None and node._worker is None
    finally:
        h.close()


def test_a_failed_configure_is_a_failure_naming_the_path_not_a_crash():
    h = Harness("/lifecycle_fail", {"stage1.weights": "/nonexistent/stage1.pt", "compute.torch_threads": 1})
    try:
        assert not h.transition(Transition.TRANSITION_CONFIGURE)
        assert h.state() == "unconfigured" and "/nonexistent/stage1.pt" in h.node.configure_error
        assert h.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and h.state() == "finalized"
    finally:
        h.close()


FAULTY_NODE = """
import sys
from sgdfuse_ros.pipeline import FusionPipeline
from sgdfuse_ros.ros.node import run

def faulty_pipeline(config):
    pipeline = FusionPipeline.from_config(config)

    def fuse(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    pipeline.begin = fuse
    return pipeline

sys.exit(run(sys.argv, pipeline_factory=faulty_pipeline))
"""


def test_sticky_cuda_errors_exit_with_status_3(tmp_path, stage1_weights):
    namespace = "/fatal"
    args = ["--ros-args", "-r", f"__ns:={namespace}", "-p", "compute.torch_threads:=1"]
    args += ["-p", "node.input_qos:=reliable"]
    if stage1_weights:
        args += ["-p", f"stage1.weights:={stage1_weights}"]
    log = tmp_path / "node.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", FAULTY_NODE, *args],
            cwd=str(tmp_path),  # not the source tree: the installed package has the generated msg/
            env=ros_subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    context = rclpy.Context()
    rclpy.init(context=context)
    feeder = rclpy.create_node("feeder", namespace=namespace, context=context)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    thermal = feeder.create_publisher(Image, "thermal/image", reliable)
    rgb = feeder.create_publisher(Image, "rgb/image", reliable)
    try:
        deadline = time.monotonic() + 120
        stamp = 1_700_000_000
        while process.poll() is None and time.monotonic() < deadline:
            stamp += 1
            header = Header(stamp=Time(sec=stamp), frame_id="cam")
            thermal.publish(array_to_image(np.full((48, 64), 128, np.uint8), "mono8", header))
            rgb.publish(array_to_image(np.full((48, 64, 3), 90, np.uint8), "rgb8", header))
            time.sleep(0.2)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    finally:
        feeder.destroy_node()
        context.try_shutdown()
    output = log.read_text()
    assert process.returncode == EXIT_CUDA_FAULT, output
    assert "3 consecutive CUDA errors" in output and "[FATAL]" in output and "Traceback" not in output
    assert output.count("(pipeline_error)") >= 1  # the dropped frames were logged as such first
