"""Batch scoring: rows from files through a Predictor into Parquet or JSON Lines.

    local.py     the engine on this machine, and what both engines share (columns, classify, writing)
    ray_data.py  the same job as a Ray Data pipeline
"""
