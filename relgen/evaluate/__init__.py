"""relgen.evaluate: the one scoring path.

* :mod:`relgen.evaluate.stats`: intervals and paired tests for outcomes that cluster by prompt
  (prompt-cluster bootstrap, Wilson, McNemar's exact test, the paired bootstrap) and the
  ``claims`` entries of a results file.

Importing this package is cheap; metric models load only when a metric runs.
"""
