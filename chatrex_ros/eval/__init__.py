"""Offline evaluation: bag reading/writing, metrics, reports, sample data. ROS-free.

Modules, in data-flow order:

* :mod:`~chatrex_ros.eval.groundtruth`: COCO ground truth tied to bag images by ``images[].stamp_ns``
  (the image message's ``header.stamp`` in nanoseconds), referring queries, stamp matching.
* :mod:`~chatrex_ros.eval.bagio`: rosbag2 (mcap, sqlite3) reading and writing with ``rosbags``; our
  messages are registered from the ``.msg`` files, or taken from the bag's own definitions.
* :mod:`~chatrex_ros.eval.records`: per-frame proposal and answer records, from the core's results or
  from recorded ``ProposalArray``/``Answer`` messages (duck-typed), and the evaluation's query ids.
* :mod:`~chatrex_ros.eval.metrics`: pure metric functions (COCO matching, recall@K, P/R, mAP, latency).
* :mod:`~chatrex_ros.eval.scoring`: records + ground truth -> the metrics dict (``score_answers``,
  ``score_proposals``), shared by the offline run and recorded/replayed runs.
* :mod:`~chatrex_ros.eval.offline` (run the models on a bag), :mod:`~chatrex_ros.eval.recorded`
  (score a bag recorded from the nodes), :mod:`~chatrex_ros.eval.report` (metrics.json, report.md, PNGs),
  :mod:`~chatrex_ros.eval.sample` (the sample bag from scikit-image photographs).
"""
