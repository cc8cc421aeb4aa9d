"""Looking inside a package: reports and pictures, read-only.

    inspect.py   the JSON report: contract, structure, weights, compute, validity
    graph.py     the graph as an offline HTML page (graph_page.html) or PNG
    view.py      the graph in Netron
    profile.py   where the time goes, node by node, drawn on the graph
    report.py    the model card bench writes
"""
