"""Tests of the MQTT contract."""
