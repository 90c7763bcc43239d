"""Our own UPN (Universal Proposal Network): network, checkpoint loading, processing, export, backends.

Importing this package is cheap: the network's modules (:mod:`.model`, :mod:`.checkpoint`, :mod:`.export` and
the layers they use) import torch, :mod:`.config`, :mod:`.processing` and the ONNX Runtime and TensorRT
backends do not.

    from chatrex_ros.models.upn.model import build_upn
    model = build_upn("large")                      # or "tiny", or a reference-schema config dict
    boxes, logits = model(pixels, prompt="fine")    # (B, Q, 4) cx cy w h in [0, 1], (B, Q, 1) pre-sigmoid
"""
