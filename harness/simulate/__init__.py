"""Fleet simulator: R replicas fitted from a measured run, routing policies, SLO attainment and the smallest R."""
