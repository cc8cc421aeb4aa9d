"""The torch side: from data to a checkpoint, and from a checkpoint to a package. The only
floor that imports torch, Lightning, transformers or torchmetrics (`pip install 'onnxpack[train]'`).

    datamodule.py   Lightning data module over core.data's splits
    model.py        the Lightning module around a Hugging Face sequence classifier
    train.py        fine-tuning, writing best.ckpt and a plain Hugging Face folder
    export.py       checkpoint -> package (torch.onnx), self-checked on three batch sizes
    localize.py     where an exported graph first departs from PyTorch
    verify.py       PyTorch against ONNX Runtime on every validation row
    bench.py        bench's PyTorch baseline
"""
