"""Looking inside a package: reports and pictures, read-only.

    inspect.py   the JSON report: contract, structure, weights, compute, validity
    diff.py      two packages (or variants, or .onnx files) compared: structure, then behaviour on data
    explanation.py  explain's answers shown: words coloured in the terminal, a self-contained page
    graph.py     the graph as an offline HTML page (graph_page.html) or PNG
    view.py      the graph in Netron
    profile.py   where the time goes, node by node, drawn on the graph
    report.py    the model card bench writes
"""
