"""Tests of the simulated SMP devices: golden wire bytes, the pure device core, the fleet, the UDP server."""
