"""Serving soft prompts of many tasks from one frozen model (issue 17).

`bank` holds the trained prompts (one [P, H] table per task, loaded from the
formats training and export write); `engine` runs mixed-task batches of
requests through one compiled program per batch shape, with the bank as an
input of that program, so adding or removing a task never recompiles. The
HTTP layer (app, batcher, metrics, the serve binary) sits on top of both.
"""
