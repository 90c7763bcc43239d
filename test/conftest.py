"""Test environment: DDS stays on this machine, a per-run domain, logs in a temp dir, big-SHM profile."""

from __future__ import annotations

import os
import random
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_DIR = Path(__file__).resolve().parent

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(10, 99)))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="chatrex_ros_test_logs_"))
sys.path.insert(0, str(ROOT))
from chatrex_ros.launcher import with_fastdds_profile  # noqa: E402  (needs only the path above)

os.environ.update(with_fastdds_profile(dict(os.environ), str(ROOT / "config" / "fastdds.xml")))
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
# Node processes started by the tests import this tree's code and the test doubles.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TEST_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(
    os.pathsep
)
# A suite started in the background of a script (`pytest &`, nohup) inherits SIGINT ignored, and so would every
# node it starts: their Ctrl-C shutdown, which many tests check, would never happen. Restore the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
for path in (str(TEST_DIR), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)
