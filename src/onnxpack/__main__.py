"""`python -m onnxpack`: the same app as the `onnxpack` console script."""

from onnxpack.cli import main

main()
