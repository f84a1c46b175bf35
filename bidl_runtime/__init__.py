"""The spatio-temporal device grid: planner, device contexts, cells, event-gated channels, driver."""
