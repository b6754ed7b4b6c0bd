"""Cost models: ``step_time(batch) -> seconds`` behind one interface."""
