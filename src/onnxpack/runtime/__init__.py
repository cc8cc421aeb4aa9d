"""The runtime side: a package in, answers and figures out, with ONNX Runtime and no torch.

    feed.py       texts -> the model's inputs: the one place a feed is built
    predictor.py  Predictor, the one code path to a model (serve, batch, bench and verify use it)
    optimize.py   the accuracy-gated ladder of optimized and quantized variants
    bench.py      latency and throughput of each variant, and the MatMul ceilings
    batch/        files in, labelled files out: locally or on Ray Data
"""
