"""A simulated world: SMP devices over UDP with MCUboot semantics and a Memfault cloud emulator."""
