"""Online replay (``chatrex-ros replay``): a bag's camera frames -> the running nodes -> a new bag of their outputs.

The publisher drives, the plan decides. Only :mod:`~chatrex_ros.replay.publisher` talks to ROS; everything
else here is plain Python (importing it never loads rclpy or messages), so the decisions are unit-tested
without DDS. Modules, in the order one replay meets them:

* :mod:`~chatrex_ros.replay.options`: :class:`ReplayOptions` (the command line's knobs) and :class:`ReplayError`.
* :mod:`~chatrex_ros.replay.plan`: which frames of the bag go out and which queries each one is asked.
* :mod:`~chatrex_ros.replay.clock`: the replay clock (bag time as a function of wall time, held in step mode).
* :mod:`~chatrex_ros.replay.pacing`: when each frame and query is due, and when a frame is complete.
* :mod:`~chatrex_ros.replay.progress`: what was published and what came back (thread-safe bookkeeping).
* :mod:`~chatrex_ros.replay.recorder`: the recording, a new bag on the image-stamp time axis.
* :mod:`~chatrex_ros.replay.report`: the summary a replay ends with (table and JSON).
* :mod:`~chatrex_ros.replay.publisher`: the ROS side: publishers, subscriptions, /clock, the replay loop.
"""
