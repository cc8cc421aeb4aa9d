"""Classify texts over the Open Inference Protocol (V2) with Triton's own client, against either server:

    onnxpack serve PACKAGE --port 8000            ->  python scripts/v2_client.py --model NAME "Some text."
    tritonserver --model-repository REPO          ->  python scripts/v2_client.py --model NAME_text "Some text."

The request is the same for both: a BYTES tensor `text` of shape [n, 1] (and `text_pair` for a pair
model, with --pair: texts are read two by two), answered with `label`, `score` and `logits`.
Needs `pip install 'onnxpack[triton]'` (tritonclient[http]).
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient


def classify(url: str, model: str, texts: list[str], pairs: bool = False) -> list[dict]:
    """[{"text", "label", "score"}] for `texts`, from the server at `url` (host:port)."""
    columns = {"text": texts[0::2], "text_pair": texts[1::2]} if pairs else {"text": texts}
    inputs = []
    for name, column in columns.items():
        tensor = httpclient.InferInput(name, [len(column), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in column], dtype=np.object_),
                                   binary_data=False)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("label", "score", "logits")]
    with httpclient.InferenceServerClient(url=url) as client:
        result = client.infer(model, inputs, outputs=outputs)
    labels = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("label").reshape(-1)]
    scores = result.as_numpy("score").reshape(-1).tolist()
    shown = [f"{a} | {b}" for a, b in zip(*columns.values())] if pairs else texts
    return [{"text": t, "label": label, "score": score} for t, label, score in zip(shown, labels, scores)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of the server's HTTP endpoint")
    parser.add_argument("--model", required=True, help="the package's name (onnxpack serve) or NAME_text (Triton)")
    parser.add_argument("--pair", action="store_true", help="a pair model: the texts are (first, second) two by two")
    args = parser.parse_args()
    for row in classify(args.url, args.model, args.texts, args.pair):
        print(f"{row['label']:>14} {row['score']:.3f}  {row['text']}")


if __name__ == "__main__":
    main()
