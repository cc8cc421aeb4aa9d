"""Artifacts for other runtimes, written from a package.

    triton.py        a Triton model repository (+ triton_models/, the Python-backend models it copies)
    kserve.py        a KServe InferenceService for that repository
    compat.py        which ONNX Runtime and Triton releases load a graph (compat.json)
    node_runtime.py  running a package in onnxruntime-node (node/run.js)
    mlflow.py        a package as an MLflow pyfunc model, logged and registered (onnxpack[mlflow])
"""
