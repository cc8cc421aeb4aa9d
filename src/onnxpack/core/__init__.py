"""The floor every other stands on: what a package is and how it is checked, with no model
framework. Standard library, numpy, onnx and pyarrow only.

    errors.py     OnnxpackError and its kinds: the one-line errors a user can fix
    registry.py   name -> spec tables whose failed lookups list the valid names
    config.py     every stage's options: defaults, help texts and limits, written once
    package.py    the package format: manifest, file names, variants
    atomic.py     the one way anything is written: temp sibling, fsync, rename
    untrusted.py  trust checks for ONNX files that onnxpack did not write
    onnxfile.py   ONNX-proto helpers: load, save, element types, sizes, FLOPs
    families.py   the model families onnxpack packages, and their graph inputs
    tables.py     the one reader of tabular text (TSV, CSV, Parquet, JSON Lines)
    data.py       train and validation splits, from a folder, the Hub or the bundled CoLA
    metrics.py    MCC and micro-F1
    cpu.py        this CPU's instruction set and ONNX Runtime's int8 path on it, for every figure
"""
