"""Model backends behind small interfaces (see :mod:`chatrex_ros.models.base`).

Heavy dependencies (torch, onnxruntime, tensorrt, transformers) are imported lazily by the backend that
needs them, so importing this package stays cheap.
"""
