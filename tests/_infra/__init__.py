"""Real services the test suite starts for itself (PostgreSQL; more later)."""
