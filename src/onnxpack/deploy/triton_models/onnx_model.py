"""Triton Python-backend model: the package's ONNX graph run with ONNX Runtime.

Written by `onnxpack export-serving --model-backend python` as `<name>/1/model.py`, for a Triton
that has no onnxruntime backend (such as the server in PyPI's nvidia-pytriton). It takes and
gives the same tensors as the onnxruntime-backend config; it needs numpy and onnxruntime in the
server's Python. One session per instance, with its threads from the `threads` parameter.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("threads", "0"))
        folder = Path(args["model_repository"]) / args["model_version"]
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]

    def execute(self, requests: list) -> list:
        """The dynamic batcher's requests in one session run: the tokenizer pads every row to the
        same length, so their rows stack."""
        import triton_python_backend_utils as pb_utils

        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(np.int64)
                  for name in self.input_names} for request in requests]
        sizes = [len(feed[self.input_names[0]]) for feed in feeds]
        stacked = {name: np.concatenate([feed[name] for feed in feeds]) for name in self.input_names}
        outputs = self.session.run(self.output_names, stacked)
        bounds = np.cumsum([0] + sizes)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, o[a:b])
                                                           for n, o in zip(self.output_names, outputs)])
                for a, b in zip(bounds[:-1], bounds[1:])]
