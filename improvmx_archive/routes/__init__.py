"""HTTP routes, one blueprint per group."""
