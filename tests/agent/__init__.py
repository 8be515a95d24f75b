"""Tests of the gateway agent."""
