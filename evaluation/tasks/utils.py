"""lm-eval `!function` hooks for the offline tasks: documents built from the held-out corpus."""

from megadyt.evaluation.offline import load_task_data


def nextline(**metadata):
    return load_task_data("stdlib_nextline", **metadata)


def nextline_gen(**metadata):
    return load_task_data("stdlib_nextline_gen", **metadata)


def heldout_ppl(**metadata):
    return load_task_data("stdlib_heldout_ppl", **metadata)
