"""Explanations shown: words coloured by attribution in the terminal, and a self-contained HTML page.

Green words argued for the explained label, red ones against it; the stronger the colour, the larger
the share of the text's largest attribution. The page holds text only: every word, label and name is
escaped, and its Content-Security-Policy allows its own style and nothing else (no script at all).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from rich.text import Text as RichText

from onnxpack.core.htmlsafe import content_security_policy

SHADES = 5  # colour steps on each side
GREEN = ("#e3f4e8", "#bfe5c9", "#93d3a6", "#62bd80", "#2f9e5a")
RED = ("#fbe7e6", "#f6c4c1", "#ef9a94", "#e56a62", "#cf3b31")


def shade(attribution: float | None, largest: float) -> int:
    """-SHADES..SHADES: the colour step of one word (0: none, or not read)."""
    if attribution is None or largest <= 0:
        return 0
    step = min(SHADES, round(abs(attribution) / largest * SHADES))
    return step if attribution > 0 else -step


def _largest(answer: dict[str, Any]) -> float:
    return max((abs(w["attribution"]) for w in answer["words"] if w["attribution"] is not None), default=0.0)


def _parts(answer: dict[str, Any]) -> list[str]:
    text = answer["text"]
    return list(text) if isinstance(text, (tuple, list)) else [text]


def _spans(answer: dict[str, Any], part: int) -> list[tuple[str, dict[str, Any] | None]]:
    """The text of `part` cut into (piece, word) runs: words with their entry, the gaps between with None."""
    piece, at, runs = _parts(answer)[part], 0, []
    for word in answer["words"]:
        if word.get("part", 0) != part:
            continue
        if word["start"] > at:
            runs.append((piece[at:word["start"]], None))
        runs.append((piece[word["start"]:word["end"]], word))
        at = word["end"]
    if at < len(piece):
        runs.append((piece[at:], None))
    return runs


def _heading(answer: dict[str, Any]) -> str:
    head = f"{answer['label']} {answer['score']:.3f}"
    if answer["label"] != answer["predicted"]:
        head += f" (predicted: {answer['predicted']})"
    if answer["windows"] > 1:
        head += f", {answer['windows']} windows"
    return head


def terminal(answers: Sequence[dict[str, Any]]) -> list[RichText]:
    """Per text: a heading line and the text with its words coloured."""
    lines = []
    for answer in answers:
        lines.append(RichText(_heading(answer), style="bold"))
        largest = _largest(answer)
        for part in range(len(_parts(answer))):
            line = RichText("  " if len(_parts(answer)) == 1 else f"  {'AB'[part]}: ")
            for piece, word in _spans(answer, part):
                step = shade(word["attribution"], largest) if word else 0
                colour = (GREEN if step > 0 else RED)[abs(step) - 1] if step else None
                line.append(piece, style=f"black on {colour}" if colour else "dim" if word and
                            word["attribution"] is None else "")
            lines.append(line)
        top = sorted((w for w in answer["words"] if w["attribution"] is not None),
                     key=lambda w: -abs(w["attribution"]))[:5]
        lines.append(RichText("  strongest: " + ", ".join(f"{w['word']} {w['attribution']:+.3f}" for w in top),
                              style="dim"))
    return lines


STYLE = "\n".join([
    "body { font-family: system-ui, sans-serif; color: #1d2330; background: #f6f7f9; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }",
    ".answer { background: white; border: 1px solid #e0e3e8; border-radius: 8px; padding: .8rem 1rem; margin: 1rem 0; }",
    ".head { font-weight: 600; margin: 0 0 .5rem; } .text { line-height: 1.9; margin: .3rem 0; }",
    ".text span { border-radius: 3px; padding: .1rem .05rem; } .unread { color: #9aa1ad; }",
    ".part { color: #5b6475; font-size: .85rem; } .key { color: #5b6475; font-size: .85rem; }",
    *(f".p{k + 1} {{ background: {c}; }}" for k, c in enumerate(GREEN)),
    *(f".n{k + 1} {{ background: {c}; }}" for k, c in enumerate(RED)),
])


def html_page(answers: Sequence[dict[str, Any]], title: str) -> str:
    """A self-contained page: each text with its words highlighted; a word's attribution in its tooltip."""
    e = html.escape
    blocks = []
    for answer in answers:
        largest = _largest(answer)
        parts = []
        for part in range(len(_parts(answer))):
            spans = []
            for piece, word in _spans(answer, part):
                if word is None:
                    spans.append(e(piece))
                elif word["attribution"] is None:
                    spans.append(f'<span class="unread" title="not read">{e(piece)}</span>')
                else:
                    step = shade(word["attribution"], largest)
                    css = f' class="{"p" if step > 0 else "n"}{abs(step)}"' if step else ""
                    spans.append(f'<span{css} title="{word["attribution"]:+.4f}">{e(piece)}</span>')
            label = f'<span class="part">{"AB"[part]}</span> ' if len(_parts(answer)) > 1 else ""
            parts.append(f'<p class="text">{label}{"".join(spans)}</p>')
        blocks.append(f'<section class="answer"><p class="head">{e(_heading(answer))}</p>{"".join(parts)}</section>')
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{content_security_policy(f"<style>{STYLE}</style>")}">
<title>{e(title)} · why</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{e(title)}</h1>
<p class="key">Green words argued for the label, red ones against it: each word's colour is how much the label's
score fell when the word was left out (hover for the number). Grey words were not read.</p>
{"".join(blocks)}
</body>
</html>
"""
