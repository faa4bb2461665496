"""relgen.evaluate: the one scoring path.

    from relgen.evaluate import evaluate
    report = evaluate(run_dir="outputs/reversion/...", prompts="reversion_benchmark",
                      relation="painted_on", metrics=["clip_t", "clip_r", "vlm_relation"])

* :mod:`relgen.evaluate.harness`: generate every condition with the same seeds, score, report
  (behind ``python -m relgen.evaluate``);
* :mod:`relgen.evaluate.metrics`: the papers' metrics (VLM judge, detector, CLIP, DINO, FID)
  and relworld's exact detector;
* :mod:`relgen.evaluate.stats`: intervals and paired tests for outcomes that cluster by prompt
  (prompt-cluster bootstrap, Wilson, McNemar's exact test, the paired bootstrap) and the
  ``claims`` entries of a results file;
* :mod:`relgen.evaluate.prompts`: the prompt sets; :mod:`relgen.evaluate.report`: the report.

Importing this package is cheap; metric models load only when a metric runs.
"""


def evaluate(cfg=None, progress: bool = True, **overrides):
    """Generate (or read), score and report; see :func:`relgen.evaluate.harness.evaluate`."""
    from relgen.evaluate.harness import evaluate as _evaluate

    return _evaluate(cfg, progress=progress, **overrides)
