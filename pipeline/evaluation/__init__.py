"""Tools that score the pipeline and are not part of the weekly run: the walk-forward backtest
(`backtest`), MovieLens 100k as the modelling stage's files or as events (`movielens`), and the
synthetic ageing shop's backtest (`ageing_shop`). Each is a `python -m` command over the tasks'
own functions.
"""
