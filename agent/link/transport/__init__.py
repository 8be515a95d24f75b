"""Links that carry SMP frames to a device: UDP (SMP over UDP), BLE (GATT, via bleak), serial."""
