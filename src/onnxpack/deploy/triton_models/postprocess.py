"""Triton Python-backend model: logits in, `predict`'s label and score out.

Written by `onnxpack export-serving` as `<name>_postprocess/1/model.py`; numpy only. Single-label
models take the softmax's best label; multi-label models give each label's sigmoid, the best one
as `label`, and every label at or over its threshold in `labels` (a JSON list).
"""

import json

import numpy as np


def label_and_score(logits: np.ndarray, labels: list, multi_label: bool, thresholds: list) -> dict:
    """[batch, labels] logits -> label [batch, 1] (bytes), score [batch, 1] and, multi-label, labels."""
    if multi_label:
        p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    else:
        e = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
        p = e / e.sum(axis=-1, keepdims=True)
    best = p.argmax(axis=-1)
    out = {"label": np.array([[labels[b].encode("utf-8")] for b in best], dtype=np.object_),
           "score": p[np.arange(len(p)), best].astype(np.float32).reshape(-1, 1)}
    if multi_label:
        given = [[n for n, x, t in zip(labels, row, thresholds) if x >= t] for row in p]
        out["labels"] = np.array([[json.dumps(g).encode("utf-8")] for g in given], dtype=np.object_)
    return out


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.labels = json.loads(parameters["labels"])
        self.multi_label = parameters["problem_type"] == "multi_label_classification"
        self.thresholds = json.loads(parameters.get("thresholds") or "[]")
        self.output_names = [t["name"] for t in config["output"]]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            out = label_and_score(logits, self.labels, self.multi_label, self.thresholds)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, out[name]) for name in self.output_names]))
        return responses
