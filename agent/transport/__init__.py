"""Links that carry SMP frames to a device: UDP (SMP over UDP) and BLE (GATT, via bleak)."""
