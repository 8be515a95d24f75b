"""Tests for the shared service runtime."""
