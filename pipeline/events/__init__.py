"""The events stage (`[pipeline] source = events`): the week's four files made from the shop's raw events.

`inputs` reads the events and items files under their contract, `history` sums a window of them at a
cutoff, `popularity` forecasts next week's, `candidates` draws each active user's candidates from
the sources, `outcomes` labels them by what users did next, and `tasks` is the stage's Luigi graph.
Nothing is imported here: the load tasks' processes import `tasks` alone, and the heavy libraries
only when the stage runs.
"""
