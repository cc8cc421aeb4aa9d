"""The HTTP front end: FastAPI on uvicorn, `/predict` and the Open Inference Protocol (KServe V2)
over REST, JSON or the binary tensor data extension, plus `/metrics` and a web page.

    schema.py      the request and response bodies: the OpenAPI schema, and every request's validation
    app.py         build_app: the routes and the error handlers
    fast_path.py   well-formed inference requests answered ahead of FastAPI's routing
    middleware.py  the body limit, V2 bodies as Triton's clients send them, the metrics

Nothing here imports grpc; `onnxpack.serve.runner` runs the app on uvicorn.
"""
