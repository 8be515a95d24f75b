"""The controller's durable state on SQLite (default) or PostgreSQL, behind one `FleetStore`."""
