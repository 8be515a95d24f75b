"""Tests that the deploy/ material is real: broker ACLs, Prometheus rules, units, dashboards."""
