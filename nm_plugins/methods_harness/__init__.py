"""Issue 25's harness (``make reproduce-methods``): every registered N:M training method on the ImageNet proxy's
high-sparsity study (1:8, 1:16) and on the translation proxy (2:4), side by side with SR-STE under the same seeds,
schedules and paired statistics, and a leaderboard.

It drives both proxy trainers (``nm_plugins.train``, ``nm_plugins.translation``), so it lives outside both; nothing in
the package imports it (tests/test_structure.py checks). Modules: :mod:`.grid` (which runs, which reuse committed
values, the methods' settings), :mod:`.masks` (properties of a trained model's masks), :mod:`.bench` (CPU step time
per method vs dense, interleaved), :mod:`.reproduce` (the entry point). The leaderboard table itself is verdict code
(``nm_plugins.verdicts.leaderboard``), shared with the report page.
"""
