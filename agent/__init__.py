"""The gateway agent: discovers SMP devices, publishes inventory, executes OTA jobs."""
