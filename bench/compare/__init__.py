"""Side-by-side benchmarks: the same flows through eventbus and through the tools users would pick instead.

Run with ``just bench`` (or ``.bench-venv/bin/python bench/side_by_side.py``). One module per family
of flows; each exposes ``cases(setup)``, the cases of one round. :mod:`.common` has what they share,
:mod:`.report` turns the rounds into the table, the results JSON and the chart.
"""
