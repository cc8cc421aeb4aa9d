"""`python -m onnxpack`: the same app as the `onnxpack` console script."""

from .cli import main

main()
