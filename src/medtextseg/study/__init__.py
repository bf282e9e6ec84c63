"""medtextseg.study: repeated-run studies (N seeds x M configurations).

* :mod:`medtextseg.study.statistics`: describe a sample of runs (mean ± std, t CI, Shapiro–Wilk), paired
  t / Wilcoxon tests, Holm correction, all pairwise configuration comparisons.
* :mod:`medtextseg.study.report`: ``write_study_report`` turns the runs' evaluation summaries into CSV,
  Markdown, JSON and plots.

Nothing is imported here, so that importing one submodule does not load scipy and matplotlib for the other.
"""
