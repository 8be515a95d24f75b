"""End-to-end tests: real broker, simulated devices over UDP, the cloud emulator, real processes."""
