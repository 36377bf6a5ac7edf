"""The `make tables` builder: paper numbers (results/paper/) beside our runs' summaries (results/runs/).

runs.py     load results/runs/<experiment>/<run>/{summary.json,config.yaml}, select runs of a cell
paper.py    read a paper table (CSV, "?" = unknown) and look up one cell
spec.py     read a table's mapping (results/paper/<table>.yaml) and expand it into cells
metrics.py  per-run metric values and their aggregation over seeds
scale.py    full or reduced scale: a run's config against the paper's setting
render.py   write one table as markdown (tabulate) and LaTeX
"""
