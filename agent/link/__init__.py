"""The I/O side of SMP: everything between an encoded request and the device.

- `transport/`: one adapter per medium (UDP sockets, BLE via bleak, serial via pyserial-asyncio),
  each moving whole SMP frames.
- `session`: one device's conversation over a transport (sequence numbers, futures, timeouts).
- `device_link`: opens a session to a device and proves it answers.
- `image_upload`: drives the pure upload window (`agent.smp.upload`) over a session.

The wire formats and decisions these drive live in `agent.smp`, which does no I/O.
"""
