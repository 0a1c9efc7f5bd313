"""The in-process engines as a Ray Serve deployment of N replicas with adapter-aware (multiplexed) routing."""
