"""A worker function for the grading-pool timeout test, in a module light enough that a spawned
worker imports it in milliseconds (the test's own module would import torch)."""

import time


def sleep_then_echo(name: str, seconds: float):
    time.sleep(seconds)
    return (name, seconds)
