"""Tests against real Zephyr 4.4 + MCUboot builds (smpclient 7.3.0's fixtures), never skipped."""
