"""Comparing runs: `bilevel compare` and the end-of-sweep callback read run directories and write a table, an HTML
report and PNG plots."""
