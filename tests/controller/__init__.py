"""Tests for the controller."""
