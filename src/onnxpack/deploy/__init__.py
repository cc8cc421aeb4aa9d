"""Artifacts for other runtimes, written from a package, and the runtimes `check` compares it in.

    triton.py        a Triton model repository (+ triton_models/, the Python-backend models it copies)
    kserve.py        a KServe InferenceService for that repository
    compat.py        which ONNX Runtime and Triton releases load a graph (compat.json)
    runtimes.py      the runtimes `check --runtime` compares with Python's: node, web, ort-format
    comparison.py    what each of them reports of a variant against Python's ONNX Runtime
    node_runtime.py  running a package in onnxruntime-node (node/run.js)
    web.py           export-web: a static folder that classifies in the browser (web/*.mjs), and its page
                     in headless Chromium for check
    mobile.py        export-mobile: a package in ONNX Runtime's ORT format, with its operators config
    npm.py           the npm packages node_runtime and web use, installed into the user's cache
    mlflow.py        a package as an MLflow pyfunc model, logged and registered (onnxpack[mlflow])
"""
