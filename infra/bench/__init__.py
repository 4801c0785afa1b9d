"""Measuring a running endpoint (`llmfleet bench`: load sweep, ray.tune search, calibration of the
planner) and running offline batch jobs on a cluster (`llmfleet batch`: ray.data.llm)."""
