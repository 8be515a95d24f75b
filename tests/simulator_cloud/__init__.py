"""Tests of the Memfault cloud emulator: its pure model and its HTTP API on loopback."""
